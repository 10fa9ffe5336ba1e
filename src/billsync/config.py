"""Configuration from ``BILLSYNC_*`` environment variables (README, "Configuration")."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billsync.core.periods import validate_anchor_day

EXAMPLE_CATALOG = Path(__file__).parent / "catalogs" / "example.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLSYNC_", extra="ignore")

    data_dir: Path = Field(
        default=Path("var"), description="Where the SQLite ledger and generated secrets live."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/billsync.db. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )
    sqlite_synchronous: str = Field(
        default="FULL",
        description="SQLite 'synchronous' pragma: FULL survives power loss, NORMAL only crashes.",
    )
    api_token: str | None = Field(
        default=None,
        description="Bearer token(s) for /v1 (comma-separated to rotate). "
        "If unset, `billsync serve` generates one in <data_dir>/api-token.",
    )
    catalog: Path = Field(default=EXAMPLE_CATALOG, description="The catalog TOML file.")
    billing_anchor_day: int = Field(
        default=1, description="Day of the month (1–28, UTC) on which periods start."
    )
    usage_horizon_days: int = Field(
        default=45, ge=1, le=400, description="Events older than this are refused."
    )
    max_batch_events: int = Field(default=5000, ge=1, description="Events per POST /v1/usage.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Request body cap.")
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(default=1, ge=1, description="API processes for `billsync serve`.")

    @field_validator("billing_anchor_day")
    @classmethod
    def _anchor(cls, value: int) -> int:
        return validate_anchor_day(value)

    @field_validator("sqlite_synchronous")
    @classmethod
    def _synchronous(cls, value: str) -> str:
        normalized = value.upper()
        if normalized not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError("must be OFF, NORMAL, FULL or EXTRA")
        return normalized

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'billsync.db').resolve()}"

    def api_tokens(self) -> list[str]:
        if not self.api_token:
            return []
        return [token.strip() for token in self.api_token.split(",") if token.strip()]
