import llmguard


def test_all_is_pinned_and_sorted() -> None:
    assert llmguard.__all__ == [
        "ChatEndpoint",
        "ClientIP",
        "Forbidden",
        "IPRateLimit",
        "InvalidRequest",
        "JWTAuth",
        "LLMGuardError",
        "MethodNotAllowed",
        "NotFound",
        "OpenAICompatible",
        "OpenAIErrors",
        "OriginFilter",
        "PayloadTooLarge",
        "Price",
        "PromptTooLarge",
        "RateLimitExceeded",
        "RequestTimeout",
        "ServerBusy",
        "Settings",
        "SettingsError",
        "SpendCapReached",
        "Storage",
        "StorageUnavailable",
        "TokenBudget",
        "TokenBudgetExceeded",
        "TokenCapReached",
        "TokenEndpoint",
        "Unauthorized",
        "UpstreamError",
        "__version__",
        "create_app",
    ]
    assert sorted(llmguard.__all__) == llmguard.__all__


def test_every_exported_name_exists() -> None:
    for name in llmguard.__all__:
        assert getattr(llmguard, name) is not None


def test_every_error_is_an_llmguard_error_whose_code_is_its_name() -> None:
    errors = [getattr(llmguard, n) for n in llmguard.__all__ if isinstance(getattr(llmguard, n), type)]
    errors = [e for e in errors if issubclass(e, Exception) and e is not llmguard.SettingsError]
    assert len(errors) == 16
    for error in errors:
        assert issubclass(error, llmguard.LLMGuardError)
        if error is not llmguard.LLMGuardError:
            assert error.code == error.__name__


def test_importing_llmguard_configures_no_logging() -> None:
    import logging

    assert logging.getLogger("llmguard").handlers == []
