"""The Django project's ASGI entry point: /llm/... to llmguard, everything else to Django.

    LLMGUARD_DEMO=1 uvicorn --app-dir examples django_app.asgi:application   # offline, no key
    OPENAI_API_KEY=sk-... JWT_SECRET=... uvicorn --app-dir examples django_app.asgi:application

The browser uses POST /llm/api/token and POST /llm/api/chat. Served under a
prefix by a proxy that strips it, add `--root-path /app` (the browser then uses
/app/llm/..., and Django's SCRIPT_NAME is /app).
"""

import os

from django.core.asgi import get_asgi_application

from llmguard import PrefixMount, create_app

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")
django_app = get_asgi_application()
llm = create_app()  # settings from the environment: OPENAI_API_KEY, JWT_SECRET, ALLOWED_ORIGIN, ...

# Django has no mount, and no lifespan: PrefixMount sends /llm/... to llmguard, the rest to
# Django, and runs llmguard's lifespan itself (Django, which refuses the lifespan scope, is
# served without one, as uvicorn would serve it alone).
application = PrefixMount(django_app, prefix="/llm", mounted=llm)
