"""A Django Channels site in one module: Django's ASGI handler for HTTP and Channels
consumers for WebSockets, as `mysite/asgi.py` would route them.

- `/hello`: an async Django view (JSON).
- `/ws/echo`: echoes text and bytes; the text `close` makes the server close with code
  4000. Its `disconnect()` writes the close code it was given to
  `$CHANNELS_MARKS/<query string>`, so a test can tell that it ran, and how often.
- `/ws/room`: every message is sent to everybody in the room (a group on the in-memory
  channel layer, so within one worker process).
"""

import os

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="channels-site-test-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["channels"],
    MIDDLEWARE=[],
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    USE_TZ=True,
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

MARKS = os.environ.get("CHANNELS_MARKS", "")


async def hello(request):
    return JsonResponse({"hello": "django", "path": request.path})


urlpatterns = [path("hello", hello)]


class Echo(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "close":
            await self.close(code=4000)
        elif text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)

    async def disconnect(self, code):
        name = self.scope["query_string"].decode() or "anonymous"
        if MARKS:
            with open(os.path.join(MARKS, name), "a") as marks:
                marks.write(f"{code}\n")


class Room(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add("room", self.channel_name)
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send("room", {"type": "chat.message", "text": text_data})

    async def chat_message(self, event):
        await self.send(text_data=event["text"])

    async def disconnect(self, code):
        await self.channel_layer.group_discard("room", self.channel_name)


application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": URLRouter(
            [path("ws/echo", Echo.as_asgi()), path("ws/room", Room.as_asgi())]
        ),
    }
)
