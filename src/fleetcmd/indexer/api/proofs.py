"""User proofs: a server trades a person's password for a proof of that person, which it
forwards with the tasks it files for them (`fleetcmd.indexer.user_proofs`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from fleetcmd.indexer.state import IndexerState, authorized

router = APIRouter(tags=["security"])
Auth = Annotated[IndexerState, Depends(authorized)]


class ProofIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=128)
    password: str = Field(max_length=1024)


@router.post("/user-proofs", status_code=201, responses={401: {"description": "bad credentials"}})
async def issue_proof(body: ProofIn, st: Auth) -> dict[str, Any]:
    """A proof of `user` (12 hours) if the password is right and the user enabled."""
    return {"data": await run_in_threadpool(st.proofs.issue, body.user, body.password)}
