"""llmguard: let a front-end-only app use an LLM without leaking the key or the budget."""

from llmguard._access_log import AccessLog
from llmguard._alerts import SpendAlerts
from llmguard._app import create_app
from llmguard._budget import TokenBudget
from llmguard._challenge import TokenChallenge
from llmguard._chat_endpoint import ChatEndpoint
from llmguard._client_ip import ClientIP
from llmguard._errors import (
    ChallengeFailed,
    ChallengeRequired,
    ChallengeUnavailable,
    Forbidden,
    InvalidRequest,
    LLMGuardError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PromptTooLarge,
    RateLimitExceeded,
    RequestTimeout,
    ServerBusy,
    SpendCapReached,
    StorageUnavailable,
    TokenBudgetExceeded,
    TokenCapReached,
    Unauthorized,
    UpstreamError,
)
from llmguard._jwt_auth import JWTAuth
from llmguard._metrics import Metrics, MetricsEndpoint
from llmguard._mount import PrefixMount
from llmguard._openai_route import OpenAICompatible, OpenAIErrors
from llmguard._origin import OriginFilter
from llmguard._otel import GenAITelemetry
from llmguard._prices import Price
from llmguard._rate_limit import IPRateLimit
from llmguard._settings import Settings, SettingsError
from llmguard._storage import Storage
from llmguard._token_endpoint import TokenEndpoint
from llmguard._usage_endpoint import UsageEndpoint
from llmguard._version import __version__

__all__ = [
    "AccessLog",
    "ChallengeFailed",
    "ChallengeRequired",
    "ChallengeUnavailable",
    "ChatEndpoint",
    "ClientIP",
    "Forbidden",
    "GenAITelemetry",
    "IPRateLimit",
    "InvalidRequest",
    "JWTAuth",
    "LLMGuardError",
    "MethodNotAllowed",
    "Metrics",
    "MetricsEndpoint",
    "NotFound",
    "OpenAICompatible",
    "OpenAIErrors",
    "OriginFilter",
    "PayloadTooLarge",
    "PrefixMount",
    "Price",
    "PromptTooLarge",
    "RateLimitExceeded",
    "RequestTimeout",
    "ServerBusy",
    "Settings",
    "SettingsError",
    "SpendAlerts",
    "SpendCapReached",
    "Storage",
    "StorageUnavailable",
    "TokenBudget",
    "TokenBudgetExceeded",
    "TokenCapReached",
    "TokenChallenge",
    "TokenEndpoint",
    "Unauthorized",
    "UpstreamError",
    "UsageEndpoint",
    "__version__",
    "create_app",
]
