"""Views of the sample: a plain page, and a form protected by CSRF that uses the session."""

import os

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from .forms import NameForm


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """A template rendered with what the request carried: the client's address is the HTTP
    client's, as the front saw it; ``pid`` tells which handler worker answered."""
    return render(request, "greetings/index.html", {
        "remote_addr": request.META.get("REMOTE_ADDR"),
        "pid": os.getpid(),
    })


@require_http_methods(["GET", "POST"])
def name_form(request: HttpRequest) -> HttpResponse:
    """GET shows the form and the name stored in the session, if any.

    POST is checked by ``CsrfViewMiddleware`` before this view runs (403 without a valid
    token); a valid name is stored in the session and the browser is redirected back here
    (post/redirect/get), so reloading the page does not post again.
    """
    if request.method == "POST":
        form = NameForm(request.POST)
        if form.is_valid():
            request.session["name"] = form.cleaned_data["name"]
            return redirect("greetings:form")
    else:
        form = NameForm()
    return render(request, "greetings/form.html", {
        "form": form,
        "name": request.session.get("name"),
    })
