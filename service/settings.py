"""Every knob of the service, from env ``LSTM_SERVE_*``, a ``.env`` file, or a YAML file.

Precedence (highest first): environment, ``.env``, the YAML file named by ``LSTM_SERVE_CONFIG_FILE``,
per-model ``serving`` overrides in ``model.json`` (batching knobs only, see ``BatchingSettings``), the
defaults below. The defaults serve the shipped models on CPU with batching on, so ``make run`` needs no
configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from service.runtime_options import GraphOptimization, PrecisionChoice, ProviderChoice, RuntimeOptions

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_PREFIX = "LSTM_SERVE_"
CONFIG_FILE_ENV = "LSTM_SERVE_CONFIG_FILE"


#: Batching defaults on a GPU, where one run of 1,024 sequences costs about twice what one does (H200:
#: 249,000 sequences/s at batch 1,024 against 13,000 at 32, docs/benchmarks.md). Padding is left to the
#: cost model calibrated on the device (``max_padding_ratio`` 1): a padded step costs a GPU far less than
#: another run, and the CPU's 0.3 cut rounds of real sentences into 4-5 runs there. The model card's
#: ``serving`` block and the operator's own settings still win over these.
CUDA_BATCHING = {"max_batch_size": 1024, "max_batch_tokens": 131072, "max_padding_ratio": 1.0, "max_queue_items": 16384}

#: Model instances on a GPU when ``model_instances`` is 0 (auto): two copies' rounds overlap each other's
#: host-side gaps (``Settings.instances_for``).
CUDA_MODEL_INSTANCES = 2


class BatchingSettings(BaseModel):
    """The batching knobs of one model version (global settings, then ``model.json`` ``serving``)."""

    max_batch_size: int = Field(ge=1)
    max_batch_tokens: int = Field(ge=1)
    max_delay_ms: float = Field(ge=0)
    max_padding_ratio: float = Field(ge=0, le=1)
    max_queue_items: int = Field(ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    model_repository: Path = Field(REPO_ROOT / "model_repository", description="folder of <model>/<version>/")
    model_versions: dict[str, str] = Field(
        default_factory=dict, description='pin versions, JSON: {"sentiment": "1"} (default: highest)'
    )
    provider: ProviderChoice = Field("auto", description="auto = CUDA if onnxruntime-gpu sees a GPU, else CPU")
    workers: int = Field(
        0,
        ge=0,
        description="HTTP front-end processes; >1 adds one inference process per device. 0 = auto: "
        "CUDA: CPUs - GPUs (2..8); CPU: CPUs // 2 (1..4), so 1 process on 2 cores",
    )
    cuda_device_ids: list[int] = Field(
        default_factory=lambda: [0], description="GPUs to serve on, JSON: [0, 1]; one inference process each"
    )
    model_instances: int = Field(
        0,
        ge=0,
        le=16,
        description="copies of each round-batched model per inference process, each with its own sessions and "
        "thread, so rounds run at the same time (Triton's instance count). 0 = auto: 2 on CUDA, 1 on CPU",
    )
    cuda_mem_limit_mb: int = Field(
        0,
        ge=0,
        description="onnxruntime's CUDA memory arena limit per inference process, MiB (0 = no limit); "
        "the arena grows by what a run asks, not in powers of two",
    )
    precision: PrecisionChoice = Field(
        "auto",
        description="graph precision: auto = int8 on CPU, fp16 on CUDA once gated there, else fp32; or force one",
    )
    intra_op_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads per session (0 = ORT picks)")
    inter_op_threads: int = Field(1, ge=0, description="onnxruntime inter-op threads per session")
    graph_optimization: GraphOptimization = Field("all", description="onnxruntime graph optimisation level")
    max_batch_size: int = Field(
        32, ge=1, description="most items (texts) in one batch; 1 = no batching (CUDA: 1024 unless set)"
    )
    max_batch_tokens: int = Field(
        8192, ge=1, description="most padded tokens (items × longest) in one batch (CUDA: 131072 unless set)"
    )
    max_delay_ms: float = Field(
        2.0, ge=0, description="most extra wait for a batch to fill, only while under concurrency"
    )
    max_padding_ratio: float = Field(
        0.3,
        ge=0,
        le=1,
        description="most padding share in one batch: queued items are cut into length groups to stay under it "
        "(CUDA: 1, the calibrated cost decides, unless set)",
    )
    max_queue_items: int = Field(
        2048, ge=1, description="queued items per model before 503 + Retry-After (CUDA: 16384 unless set)"
    )
    decode_mode: Literal["continuous", "rounds"] = Field(
        "continuous",
        description="step-by-step models (translation): continuous = step-level batching, rounds = batcher rounds",
    )
    decode_max_rows: int = Field(256, ge=1, description="continuous decoding: most decoder rows (sentences × beams)")
    decode_max_positions: int = Field(
        8192, ge=1, description="continuous decoding: most rows × padded source positions in the running set"
    )
    decode_lazy_retire: bool = Field(
        True, description="continuous decoding: finished rows leave with the next re-layout, not at once"
    )
    decode_admit_wait_steps: int = Field(
        4, ge=0, description="continuous decoding: newcomers may wait up to this many steps to join together"
    )
    decode_intra_op_threads: int = Field(
        0, ge=0, description="continuous decoding: intra-op threads of the decoding sessions (0 = min(2, CPUs))"
    )
    request_timeout_s: float = Field(10.0, gt=0, description="per-request deadline; past it: 504")
    max_texts_per_request: int = Field(64, ge=1, description="most texts in one request")
    max_text_chars: int = Field(2000, ge=1, description="most characters in one text")
    max_body_bytes: int = Field(1_048_576, ge=1, description="largest request body; larger: 413")
    warmup: bool = Field(True, description="run warm-up batches over the length buckets before ready")
    task_modules: list[str] = Field(
        default_factory=list,
        description='more modules that register task pipelines, JSON: ["my_tasks.ner"] (service/pipelines/: always)',
    )
    graceful_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, longest wait for queued work")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object a line, for log shippers"
    )
    opentelemetry: bool = Field(
        False,
        description="FastAPI's own OpenTelemetry spans, metrics and logs, where a provider is set up "
        "(off: its check costs every request)",
    )
    # --- the request edge (docs/security.md says what each protects against) ---
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated API keys; set: every endpoint but the probes needs Authorization: Bearer <key>",
    )
    api_keys_file: Path | None = Field(
        None, description="a file of API keys, one key (or its sha256 in hex) a line; adds to api_keys"
    )
    metrics_auth: bool = Field(False, description="/metrics needs an API key too (when keys are set)")
    rate_limit_per_s: float = Field(
        0.0, ge=0, description="requests a second per client (API key, else address), for the whole server; 0 = off"
    )
    rate_limit_burst: int = Field(0, ge=0, description="token bucket size per client (0 = max(1, rate_limit_per_s))")
    max_request_cost: int = Field(
        32768,
        ge=1,
        description="most work one request may ask, in its task's cost units (translation: texts × beam_size × "
        "max_length; sentiment: texts × max tokens); more: 413",
    )
    cost_per_s_per_client: float = Field(
        0.0,
        ge=0,
        description="cost units a second per client (API key, else address), for the whole server; 0 = off; over: 429",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection's request headers must arrive within this; else it is closed"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body must arrive within this after its headers; else 408 and close"
    )
    keep_alive_s: int = Field(5, ge=1, description="idle keep-alive connections are closed after this")
    max_connections: int = Field(
        1000, ge=1, description="open connections (and requests) per process before 503 (uvicorn limit_concurrency)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins browsers may call from (none: no CORS headers)"
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    def runtime_options(self) -> RuntimeOptions:
        return RuntimeOptions(
            provider=self.provider,
            intra_op_threads=self.intra_op_threads,
            inter_op_threads=self.inter_op_threads,
            graph_optimization=self.graph_optimization,
            cuda_device_id=self.cuda_device_ids[0] if self.cuda_device_ids else 0,
            cuda_mem_limit_mb=self.cuda_mem_limit_mb,
            precision=self.precision,
        )

    def instances_for(self, cuda: bool) -> int:
        """Copies of a round-batched model: the setting, else 2 on CUDA and 1 on CPU.

        Why 2 on CUDA: on the H100 (stop 17, three interleaved repeats) 2 copies gave 1.31× the texts/s of
        64-text requests and 1.08× for single texts at c=256; a third added 4-5%, less than the spread
        between repeats, for another copy of the sessions in GPU memory. On a CPU a copy costs a core.
        """
        if self.model_instances:
            return self.model_instances
        return CUDA_MODEL_INSTANCES if cuda else 1

    def decode_threads(self) -> int:
        """Intra-op threads of step-level decoding's sessions: the setting, else two where two CPUs are."""
        if self.decode_intra_op_threads:
            return self.decode_intra_op_threads
        from service.layout import available_cpus  # layout reads Settings: imported here, not at the top

        return min(2, available_cpus())

    def batching_for(self, serving: dict[str, Any], cuda: bool = False) -> BatchingSettings:
        """Batching knobs for one model: the operator's settings, else ``model.json`` ``serving``, else the
        defaults (``CUDA_BATCHING`` on a GPU).

        A knob the operator set (env, .env, YAML, or constructor) wins over the model card, so
        ``LSTM_SERVE_MAX_BATCH_SIZE=1`` turns batching off whatever the card says.
        """
        values = {}
        for name in BatchingSettings.model_fields:
            if name in self.model_fields_set:
                values[name] = getattr(self, name)
            elif name in serving:
                values[name] = serving[name]
            elif cuda and name in CUDA_BATCHING:
                values[name] = CUDA_BATCHING[name]
            else:
                values[name] = getattr(self, name)
        return BatchingSettings(**values)
