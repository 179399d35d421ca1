from __future__ import annotations

from pydantic import BaseModel, Field


class SampleOut(BaseModel):
    sample_id: str
    label: int
    forgotten_in: str | None = Field(description="The version that forgot it, if any.")
    subject_id: str | None = Field(None, description="The data subject the dataset attributes it to, if any.")
