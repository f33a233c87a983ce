"""A Flask app for the route tests: it builds its own URLs, so a route that strips a
prefix (``--route /shop=shop:strip``) shows whether ``SCRIPT_NAME`` reached it."""

from flask import Flask, jsonify, request, url_for

app = Flask(__name__)


@app.route("/items/<name>")
def item(name):
    return jsonify(url=url_for("item", name=name), script_name=request.script_root,
                   path=request.path, app="flask")


@app.route("/")
def index():
    return jsonify(url=url_for("index"), script_name=request.script_root, app="flask")
