"""Django's own routes: everything but /llm/... (asgi.py sends that to llmguard)."""

from django.http import HttpRequest, JsonResponse
from django.urls import path


async def home(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "from your own Django view"})


urlpatterns = [path("", home)]
