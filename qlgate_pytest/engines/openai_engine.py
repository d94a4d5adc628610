"""The ``openai`` engine: the golden set against a live OpenAI-compatible endpoint.

This is how a deployment is watched for drift: ``vllm serve --enable-lora --lora-modules
candidate=DIR`` (or any OpenAI-compatible server) is asked the same questions as the gate asked
the adapter. The ``candidate`` role is the served model name; a ``baseline`` role exists only when
a baseline model name is given (drift mode needs none: ``--min-f1`` is an absolute floor).

- Bounded concurrency (a thread pool over one connection pool), a timeout per attempt, retries
  with exponential backoff (honouring ``Retry-After``) on 429, 5xx and transport errors; other
  4xx answers are the request's error at once. The API key comes from ``QLGATE_API_KEY``, else
  ``OPENAI_API_KEY``, and is sent as a bearer token only.
- Latency is per request as the client experiences it: first attempt to final answer, retries
  and backoff included.
- Generation is greedy chat completion (temperature 0, the run's seed, ``max_tokens``).
- Ranking scores each label as the assistant's whole answer, as the ``hf`` engine does, where the
  server can: vLLM's ``/tokenize`` renders the chat template server-side and ``/v1/completions``
  with ``prompt_logprobs`` returns the continuation's log-probabilities. Elsewhere it falls back
  to a short greedy answer normalised to a label (``rank_method`` in :meth:`describe` says which).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from qlgate_core.errors import EngineError, EngineTimeout
from qlgate_pytest.adapter_record import engine_adapter_sha256
from qlgate_pytest.engines.base import (
    EngineConfig,
    GenerateRequest,
    Generation,
    Message,
    Ranking,
    RankRequest,
    Role,
)

API_KEY_ENVS = ("QLGATE_API_KEY", "OPENAI_API_KEY")
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER_S = 30.0
# Answers meaning "this server has no such route or parameter".
_UNSUPPORTED = frozenset({400, 404, 405, 422})
_T = TypeVar("_T")


def create(config: EngineConfig) -> OpenAIEngine:
    """Engine factory registered as ``openai``."""
    return OpenAIEngine(config)


@dataclass(frozen=True)
class EndpointSettings:
    """Where and how to call the endpoint, from :attr:`EngineConfig.extra` (``openai_*`` keys)."""

    endpoint: str
    served_model: str
    baseline_model: str | None = None
    concurrency: int = 8
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 0.5
    rank_method: Literal["auto", "logprobs", "generate"] = "auto"
    rank_max_tokens: int = 16

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> EndpointSettings:
        known = {f"openai_{name}" for name in cls.__dataclass_fields__}
        unknown = sorted(k for k in extra if k.startswith("openai_") and k not in known)
        if unknown:
            raise EngineError(f"unknown openai engine setting(s) {unknown}; known: {sorted(known)}")
        for need in ("openai_endpoint", "openai_served_model"):
            if not extra.get(need):
                flag = "--endpoint URL" if need == "openai_endpoint" else "--served-model NAME"
                raise EngineError(f"the openai engine needs {flag} ({need} is not set)")
        settings = cls(**{k[7:]: v for k, v in extra.items() if k in known})
        if not settings.endpoint.startswith(("http://", "https://")):
            raise EngineError(f"--endpoint {settings.endpoint!r}: expected an http(s):// URL")
        if settings.concurrency < 1 or settings.retries < 0 or settings.timeout_s <= 0:
            raise EngineError(
                f"openai engine: concurrency {settings.concurrency} must be >= 1, retries "
                f"{settings.retries} >= 0, timeout_s {settings.timeout_s} > 0"
            )
        if settings.rank_method not in ("auto", "logprobs", "generate"):
            raise EngineError(
                f"openai_rank_method={settings.rank_method!r}: auto|logprobs|generate"
            )
        return settings

    @property
    def api_base(self) -> str:
        """The OpenAI API root (``.../v1``)."""
        url = self.endpoint.rstrip("/")
        return url if url.endswith("/v1") else f"{url}/v1"

    @property
    def server_root(self) -> str:
        """The server root, where vLLM serves ``/tokenize``."""
        return self.api_base[: -len("/v1")]


def api_key(env: Mapping[str, str] | None = None) -> str | None:
    """The API key from the first of :data:`API_KEY_ENVS` that is set."""
    source = os.environ if env is None else env
    return next((source[name] for name in API_KEY_ENVS if source.get(name)), None)


def backoff_delay(
    attempt: int, base_s: float, retry_after: str | None, rng: random.Random
) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): ``Retry-After`` when the server gives
    seconds, else exponential with full jitter, capped."""
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), _MAX_RETRY_AFTER_S)
        except ValueError:
            pass  # an HTTP date: fall back to our own schedule
    delay = base_s * 2.0 ** (attempt - 1) * (0.5 + rng.random() / 2)
    return min(delay, _MAX_RETRY_AFTER_S)


class RequestFailed(EngineError):
    """One HTTP request failed for good; ``status`` is the last HTTP status (None: transport)."""

    def __init__(self, message: str, status: int | None) -> None:
        self.status = status
        super().__init__(message)


class OpenAIEngine:
    """See the module docstring."""

    name = "openai"

    def __init__(self, config: EngineConfig) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - httpx is a dependency of the extras
            raise EngineError("the openai engine needs httpx: pip install httpx") from exc
        self._config = config
        self.settings = EndpointSettings.from_extra(config.extra)
        # An endpoint serves what it serves (no local files, usually no adapters); a config that
        # names adapter directories still records their identity, as every engine does.
        self.adapter_sha256 = engine_adapter_sha256(config.adapters)
        headers = {"Content-Type": "application/json"}
        key = api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=self.settings.concurrency)
        self._http = httpx.Client(
            headers=headers, limits=limits, timeout=httpx.Timeout(self.settings.timeout_s)
        )
        self._httpx = httpx
        self._pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="qlgate-oai")
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self.retried = 0
        self.models: dict[Role, str] = {"candidate": self.settings.served_model}
        if self.settings.baseline_model:
            self.models["baseline"] = self.settings.baseline_model
        self.rank_method: str = self.settings.rank_method
        self._whitespace: dict[int, bool] = {}

    # -- identity -----------------------------------------------------------------------------

    def describe(self) -> Mapping[str, Any]:
        return {
            "engine": self.name,
            "endpoint": self.settings.api_base,
            "models": dict(self.models),
            "adapter_sha256": dict(self.adapter_sha256),
            "decoding": "greedy",
            "seed": self._config.seed,
            "rank_method": self.rank_method,
            "concurrency": self.settings.concurrency,
            "timeout_s": self.settings.timeout_s,
            "retries": self.settings.retries,
            "api_key": "set" if api_key() else "none",
        }

    # -- HTTP ---------------------------------------------------------------------------------

    def post(self, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST JSON with retries on 429/5xx/transport errors; RequestFailed when it gives up."""
        httpx = self._httpx
        status: int | None = None
        detail = ""
        for attempt in range(self.settings.retries + 1):
            retry_after = None
            try:
                response = self._http.post(url, json=dict(body))
            except httpx.TimeoutException as exc:
                status, detail = None, f"timed out after {self.settings.timeout_s:g}s ({exc})"
            except httpx.TransportError as exc:
                status, detail = None, f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status < 400:
                    try:
                        data: dict[str, Any] = response.json()
                    except ValueError as exc:
                        raise RequestFailed(f"{url}: answer is not JSON: {exc}", status) from None
                    return data
                detail = f"HTTP {status}: {response.text[:200]}"
                if status not in RETRY_STATUSES and status < 500:
                    raise RequestFailed(f"{url}: {detail}", status)
                retry_after = response.headers.get("retry-after")
            if attempt < self.settings.retries:
                with self._lock:
                    self.retried += 1
                    delay = backoff_delay(
                        attempt + 1, self.settings.backoff_s, retry_after, self._rng
                    )
                time.sleep(delay)
        tries = self.settings.retries + 1
        if status is None and detail.startswith("timed out"):
            raise EngineTimeout(f"{url}: {detail}, {tries} attempt(s)")
        raise RequestFailed(f"{url}: {detail} after {tries} attempt(s)", status)

    def _each(self, items: Sequence[_T], call: Callable[[_T], Any]) -> list[Any]:
        """``call`` on every item with bounded concurrency; results in order."""
        return list(self._pool.map(call, items))

    # -- serving ------------------------------------------------------------------------------

    def _model(self, role: Role) -> str:
        if role not in self.models:
            raise EngineError(
                f"role {role!r} has no served model: pass --baseline-model NAME to compare "
                f"against a baseline, or gate on --min-f1 alone"
            )
        return self.models[role]

    def warm_up(self) -> None:
        probe = (Message("user", "Hello"),)
        for role in self.models:
            got = self.generate(role, [GenerateRequest("warm-up", probe, max_new_tokens=2)])
            if got[0].error:
                raise EngineError(f"endpoint {self.settings.api_base} ({role}): {got[0].error}")

    def generate(self, role: Role, requests: Sequence[GenerateRequest]) -> list[Generation]:
        model = self._model(role)
        return self._each(requests, lambda r: self._generate_one(model, r))

    def _generate_one(self, model: str, request: GenerateRequest) -> Generation:
        body = {
            "model": model,
            "messages": [m.as_dict() for m in request.messages],
            "max_tokens": request.max_new_tokens,
            "temperature": 0.0,
            "seed": self._config.seed,
        }
        start = time.perf_counter()
        try:
            data = self.post(f"{self.settings.api_base}/chat/completions", body)
            text = str(data["choices"][0]["message"]["content"] or "")
            usage = data.get("usage") or {}
        except (EngineError, KeyError, IndexError, TypeError) as exc:
            return Generation(request.key, "", 0.0, 0, 0, _error_text(exc))
        latency = (time.perf_counter() - start) * 1000.0
        return Generation(
            request.key,
            text,
            latency,
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
        )

    def rank(self, role: Role, requests: Sequence[RankRequest]) -> list[Ranking]:
        model = self._model(role)
        if self.rank_method == "auto" and requests:
            self.rank_method = "logprobs" if self._has_logprobs(model, requests[0]) else "generate"
        use = self._rank_logprobs if self.rank_method == "logprobs" else self._rank_generate
        return self._each(requests, lambda r: use(model, r))

    def _has_logprobs(self, model: str, probe: RankRequest) -> bool:
        """Whether the server renders templates and returns prompt log-probabilities (vLLM)."""
        try:
            self._score_logprobs(model, probe)
        except RequestFailed as exc:
            return exc.status not in _UNSUPPORTED
        except (KeyError, IndexError, TypeError, ValueError):
            return False  # answered, but not in vLLM's shape
        except EngineError:
            return True  # a transport failure says nothing about the API; requests will tell
        return True

    def _tokenize(
        self, model: str, messages: Sequence[Message], generation_prompt: bool
    ) -> list[int]:
        body = {
            "model": model,
            "messages": [m.as_dict() for m in messages],
            "add_generation_prompt": generation_prompt,
        }
        data = self.post(f"{self.settings.server_root}/tokenize", body)
        return [int(t) for t in data["tokens"]]

    def _is_whitespace(self, model: str, token: int) -> bool:
        if token not in self._whitespace:
            body = {"model": model, "tokens": [token]}
            text = self.post(f"{self.settings.server_root}/detokenize", body)["prompt"]
            self._whitespace[token] = not str(text).strip()
        return self._whitespace[token]

    def continuation_ids(
        self, model: str, messages: Sequence[Message], label: str, prompt: Sequence[int]
    ) -> list[int]:
        """What the template emits after the generation prompt for ``label``, trailing
        whitespace dropped (as the ``hf`` engine does)."""
        full = self._tokenize(model, [*messages, Message("assistant", label)], False)
        if full[: len(prompt)] != list(prompt):
            raise EngineError("the chat template does not extend the prompt with the answer")
        cont = full[len(prompt) :]
        while len(cont) > 1 and self._is_whitespace(model, cont[-1]):
            cont.pop()
        return cont

    def _rank_logprobs(self, model: str, request: RankRequest) -> Ranking:
        try:
            return self._score_logprobs(model, request)
        except (EngineError, KeyError, IndexError, TypeError, ValueError) as exc:
            return Ranking(request.key, {}, "", 0.0, 0, 0, _error_text(exc))

    def _score_logprobs(self, model: str, request: RankRequest) -> Ranking:
        start = time.perf_counter()
        prompt = self._tokenize(model, request.messages, True)
        scores: list[float] = []
        conts: list[list[int]] = []
        for label in request.labels:
            cont = self.continuation_ids(model, request.messages, label, prompt)
            body = {
                "model": model,
                "prompt": prompt + cont,
                "max_tokens": 1,
                "temperature": 0.0,
                "prompt_logprobs": 0,
            }
            data = self.post(f"{self.settings.api_base}/completions", body)
            rows = data["choices"][0]["prompt_logprobs"]
            scores.append(
                sum(float(rows[len(prompt) + j][str(t)]["logprob"]) for j, t in enumerate(cont))
            )
            conts.append(cont)
        latency = (time.perf_counter() - start) * 1000.0
        best = max(range(len(scores)), key=lambda j: (scores[j], -j))
        return Ranking(
            request.key,
            dict(zip(request.labels, scores, strict=True)),
            request.labels[best],
            latency,
            len(prompt),
            len(conts[best]),
        )

    def _rank_generate(self, model: str, request: RankRequest) -> Ranking:
        from qlgate_core.scoring import normalize_label

        got = self._generate_one(
            model, GenerateRequest(request.key, request.messages, self.settings.rank_max_tokens)
        )
        if got.error:
            return Ranking(request.key, {}, "", 0.0, 0, 0, got.error)
        label = normalize_label(got.text, request.labels)
        # No log-likelihoods here: the answer itself (a label, or the raw text) is the choice.
        best = label if label is not None else got.text.strip()
        return Ranking(request.key, {}, best, got.latency_ms, got.prompt_tokens, got.output_tokens)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._http.close()


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
