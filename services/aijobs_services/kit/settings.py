"""Service configuration, read from ``AIJOBS_*`` environment variables (or passed in tests)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServiceSettings"]


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIJOBS_", extra="ignore")

    service: str = Field(description="The service's name: payment, auth, storage, ai or main")
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty means an SQLite file named after the service"
    )
    # Who may call this service: caller name -> shared secret. JSON in the environment, e.g.
    # AIJOBS_CALLERS='{"operator": "s3cret", "admin": "0ther"}'.
    callers: dict[str, str] = Field(default_factory=dict)
    # This service's own identity and secret, for the calls it makes to other services.
    identity: str = ""
    secret: str = ""
    idempotency_retention_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    migrate_on_start: bool = True
    sweep_interval_seconds: float = Field(default=5.0, ge=0, description="0 turns periodic sweeps off")
    log_level: str = "info"

    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///./aijobs-{self.service}.db"
