"""ASGI entry point: HTTP through Django, WebSockets through the chat routes.

The socket stack checks the Origin against the trusted origins first, then loads
the session user; the consumer itself refuses anyone who may not see the chat.
Around it all, the reply supervisor sweeps replies of dead processes and drains
this process's replies on shutdown.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from conversations.routing import websocket_urlpatterns  # noqa: E402
from conversations.supervision import ReplySupervisor  # noqa: E402

application = ReplySupervisor(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": OriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
                settings.CSRF_TRUSTED_ORIGINS,
            ),
        }
    )
)
