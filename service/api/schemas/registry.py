from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Name = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    kind: Literal["npz", "csv_manifest"] = Field(
        description="npz: arrays x, y, ids. csv_manifest: columns sample_id,path,label "
        "(paths relative to the CSV)."
    )
    uri: Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00]*$")] = Field(
        description="A local path under one of the service's data roots (UNLEARN_DATA_ROOTS)."
    )


class DatasetOut(BaseModel):
    id: str
    name: str
    kind: str
    uri: str
    num_samples: int
    sha256: str | None = Field(
        description="sha256 of the dataset file at registration (for a CSV manifest: of the manifest "
        "itself); workers refuse to load a file that no longer matches. Null for datasets registered "
        "before hashes were recorded."
    )
    created_at: datetime


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class Gates(BaseModel):
    """Acceptance gates for a new version; all optional, all fractions."""

    model_config = ConfigDict(extra="forbid")

    max_test_accuracy_drop: Fraction | None = None
    max_retain_accuracy_drop: Fraction | None = None
    max_forget_accuracy_above_test: Fraction | None = None
    min_mia_score: Fraction | None = None


class ModelUpdate(BaseModel):
    """An admin's change of a model's unlearning policy; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    default_method: str | None = None
    default_params: dict[str, Any] | None = None
    fallback_methods: list[str] | None = Field(None, max_length=5)
    train_recipe: dict[str, Any] | None = None
    gates: Gates | None = None
    time_limit_seconds: int | None = Field(
        None,
        ge=1,
        description="stop a job on this model after this many seconds (at most the service's "
        "UNLEARN_JOB_TIME_LIMIT_SECONDS, which applies when unset)",
    )


class ModelCreate(BaseModel):
    """The `spec` part of a model registration (the `checkpoint` part is the safetensors file)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    architecture: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        description="a built-in (`mlp`, `small_cnn`, `resnet18_cifar`), `torchvision:<builder>` (e.g. "
        "`torchvision:resnet18`), `timm:<name>` (e.g. `timm:resnet10t`) or `plugin:<name>` (an "
        "architecture the operator installed in the entry-point group `unlearn.architectures`); "
        "built with no pretrained weights: the weights are the uploaded checkpoint"
    )
    arch_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of the builder (besides num_classes, which is passed for you)",
    )
    num_classes: int = Field(ge=2, le=100_000)
    train_dataset: str = Field(description="id of a registered dataset")
    test_dataset: str = Field(description="id of a registered dataset")
    default_method: str = "ugradsl_plus"
    default_params: dict[str, Any] = Field(default_factory=dict)
    fallback_methods: list[str] = Field(default_factory=list, max_length=5)
    train_recipe: dict[str, Any] = Field(default_factory=dict, description="used by the `retrain` method")
    gates: Gates = Field(default_factory=Gates)
    time_limit_seconds: int | None = Field(
        None,
        ge=1,
        description="stop a job on this model after this many seconds (at most the service's "
        "UNLEARN_JOB_TIME_LIMIT_SECONDS, which applies when unset)",
    )
