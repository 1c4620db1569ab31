"""Request and response shapes for users and tokens."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from server.auth.tables import Role


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=120)
    role: Role


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    disabled: bool
    created_at: datetime


class TokenCreate(BaseModel):
    name: str = Field(default="", max_length=120)


class TokenIssued(BaseModel):
    token: str = Field(description="shown once; store it in the client's secret store")
    prefix: str
    user: str
    role: Role


class RevokeResult(BaseModel):
    revoked: int
