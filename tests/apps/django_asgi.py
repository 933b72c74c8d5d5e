"""A Django project in one module (settings in code) served through Django's ASGI
handler, for tests/test_django.py: an async view, a sync view (Django runs it in a
thread), and a form posted with its CSRF token."""

import asyncio
import os
import threading

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="rwsgi-tests-only-not-a-secret",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,
    USE_TZ=True,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402 (after setup)
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.middleware.csrf import get_token  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils.html import escape  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


async def async_view(request):
    await asyncio.sleep(0)
    return JsonResponse({"view": "async", "pid": os.getpid(), "path": request.path,
                         "scheme": request.scheme, "query": request.GET.get("q")})


def sync_view(request):
    # Django runs a sync view away from the event loop's thread.
    return JsonResponse({"view": "sync", "loop_thread": threading.current_thread()
                         is threading.main_thread()})


def form(request):
    if request.method == "POST":
        return HttpResponse(f"hello {escape(request.POST.get('name', ''))}")
    token = get_token(request)
    return HttpResponse(
        '<form method="post" action="/form/">'
        f'<input type="hidden" name="csrfmiddlewaretoken" value="{token}">'
        '<input name="name"></form>')


async def stream(request):
    async def chunks():
        for i in range(3):
            await asyncio.sleep(0.01)
            yield f"part-{i}\n"
    return StreamingHttpResponse(chunks(), content_type="text/plain")


@csrf_exempt
async def upload(request):
    body = request.body
    return JsonResponse({"size": len(body), "script_name": request.META.get("SCRIPT_NAME"),
                         "path_info": request.path_info, "path": request.path})


urlpatterns = [
    path("stream/", stream),
    path("upload/", upload),
    path("async/", async_view),
    path("sync/", sync_view),
    path("form/", form),
]

application = get_asgi_application()
