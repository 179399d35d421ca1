from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from annotated_types import Ge
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

Name = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]


Side = Annotated[int, Field(ge=1, le=4096, strict=True)]
Number = Annotated[float, Field(strict=True)]  # a JSON number: no strings, no booleans
Positive = Annotated[float, Field(gt=0, strict=True)]


class FeatureDeclaration(BaseModel):
    """How the stored samples become the tensors a model reads (see README, "Declaring features"):
    float32, moved to (C, H, W), divided by `scale`, normalised per channel, resized. Checked against the
    file at registration (rank, dtype, channels); the worker's loader applies it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["image"] = "image"
    dtype: (
        Literal[
            "uint8",
            "uint16",
            "uint32",
            "uint64",
            "int8",
            "int16",
            "int32",
            "int64",
            "float16",
            "float32",
            "float64",
        ]
        | None
    ) = Field(None, description="dtype of the stored array: the file's (filled in from it when left out)")
    layout: Literal["HW", "HWC", "CHW"] | None = Field(
        None,
        description="axes of one stored sample: HW (one channel), HWC or CHW. Required for an .npz; a CSV "
        "manifest's images are read as CHW already",
    )
    scale: Positive | None = Field(
        None,
        description="values are divided by it: 255 maps 8-bit pixels to [0, 1]. Required for integer "
        "arrays; 1 for floats when left out",
    )
    mean: list[Number] | None = Field(
        None, min_length=1, max_length=64, description="per channel, subtracted after scaling"
    )
    std: list[Positive] | None = Field(
        None, min_length=1, max_length=64, description="per channel, divides after subtracting the mean"
    )
    size: tuple[Side, Side] | None = Field(None, description="[height, width] to resize every sample to")

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> FeatureDeclaration:
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} value(s) but std has {len(self.std)}: one of each per channel"
            )
        return self


class TextFeatureDeclaration(BaseModel):
    """How a text dataset's texts become the tensors a text model reads: tokenized with `tokenizer`,
    truncated and padded to `max_length` tokens (`input_ids`, `attention_mask`). Required for the text
    kinds (jsonl, text_csv). The tokenizer is read from disk only; its sha256 is stored at registration
    and checked by the worker."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    tokenizer: (
        Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00]*$")] | None
    ) = Field(
        None,
        description="path of a `tokenizers` tokenizer.json (relative to the dataset file's folder, or "
        "absolute; under the data roots), or left out when the tokenizer is uploaded with the dataset",
    )
    max_length: int = Field(128, ge=1, le=8192, strict=True, description="tokens per text")
    pad_token: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="the padding token (default: the tokenizer's own, else [PAD])",
    )


def _declaration_type(value: Any) -> str:
    if isinstance(value, dict):
        return "text" if value.get("type") == "text" else "image"
    return "text" if getattr(value, "type", None) == "text" else "image"


Features = Annotated[
    Annotated[FeatureDeclaration, Tag("image")] | Annotated[TextFeatureDeclaration, Tag("text")],
    Discriminator(_declaration_type),
]


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    kind: Literal["npz", "csv_manifest", "npy", "webdataset", "jsonl", "text_csv"] = Field(
        description="npz: arrays x, y, ids (optionally subject_ids, the data subject of each sample). "
        "csv_manifest: columns sample_id,path,label (paths relative to the CSV), optionally subject_id; "
        "the images stay on disk and are read a batch at a time. "
        "npy: a folder holding x.npy (memory-mapped, read a batch at a time), y.npy, ids.npy and "
        "optionally subject_ids.npy. "
        "webdataset: a .tar shard or a folder of them; each sample's __key__ is its ID, .cls its label, "
        "an image file (png, jpg, npy, ...) its input, and an optional .subject_id member its subject; "
        "read a batch at a time. "
        "jsonl: one JSON object per line with sample_id, text, label (optionally subject_id). "
        "text_csv: columns sample_id,text,label, optionally subject_id. The text kinds need a text "
        "declaration in `features`."
    )
    uri: Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00]*$")] = Field(
        description="A local path under one of the service's data roots (UNLEARN_DATA_ROOTS)."
    )
    features: Features | None = Field(
        None,
        description="How to read the samples. Without one an .npz's x is used as it is (as float32); "
        "integer images are refused without one; text needs one (`type: text`) naming its tokenizer.",
    )


class DatasetOut(BaseModel):
    id: str
    name: str
    kind: str
    uri: str
    num_samples: int
    sha256: str | None = Field(
        description="sha256 of the dataset file at registration (for a CSV manifest: of the manifest "
        "itself; for an npy folder or a folder of shards: of each file's name and sha256); workers refuse "
        "to load data that no longer matches. Null for datasets registered "
        "before hashes were recorded."
    )
    features: dict[str, Any] | None = Field(
        None,
        description="The feature declaration as stored (dtype filled in from the file, scale defaulted); "
        "null: the samples are used as they are stored.",
    )
    created_at: datetime


# Strict: JSON's true and "0.5" are no fractions (true had been stored as 1.0, a gate switched off; a probe)
Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]


def _no_bool_or_text(value: Any) -> Any:
    """A whole number of seconds as JSON writes it, ``60`` or ``60.0`` (Python's json.dumps of a float),
    but not ``true`` (stored as 1: a one-second limit) nor ``"60"``: strict int had refused ``60.0`` too."""
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# Ge before the validator: Field(ge=1) after it was written to the schema as a keyword JSON Schema lacks
# ("ge"), and a client generated from it sent 0 (a probe)
Seconds = Annotated[int, Ge(1), BeforeValidator(_no_bool_or_text)]
Share = Annotated[float, Strict(), Field(gt=0.0, le=1.0, allow_inf_nan=False)]
# Below 1: a deletion of all of a class takes it whole, which the class share leaves out (a probe set 1,
# which could never apply)
ClassShare = Annotated[float, Strict(), Field(gt=0.0, lt=1.0, allow_inf_nan=False)]
# A registered model's gate where its spec names none: a version 10 points of test accuracy below its base
# is a run that diverged or collapsed (a probe's ascent at a large lr published one predicting one class),
# never what a deletion costs a retrain. Only where at least DEFAULT_GATE_ROWS test rows score the model:
# on a few dozen, two rows that flip are 10 points, and the guard would fail honest deletions
DEFAULT_TEST_ACCURACY_DROP, DEFAULT_GATE_ROWS = 0.1, 100
# And beside it a guard against a run that forgot nothing: D_f still recognised this many standard errors
# above unseen rows of its classes, and no lower than before the run (a probe's lr-1e-8 run, which moved no
# weight, was published; workers.gates).
DEFAULT_FORGET_EXCESS_SE = 3.0
# A class the deletion takes whole is judged on its test rows instead: a retrain never predicts it, the
# default's reruns leave it on about 1% of them, a run that did nothing on most. Generous, so that one row
# of a class with six in the scoring half (17 points) does not refuse an honest run.
DEFAULT_FORGOTTEN_CLASS_ACCURACY = 0.5


class Gates(BaseModel):
    """Acceptance gates for a new version; all optional, all fractions."""

    model_config = ConfigDict(extra="forbid")

    max_test_accuracy_drop: Fraction | None = None
    max_retain_accuracy_drop: Fraction | None = None
    max_forget_accuracy_above_test: Fraction | None = None
    min_mia_score: Fraction | None = None
    # a deletion that takes whole classes: their test rows the new version still predicts as theirs
    max_forgotten_class_accuracy: Fraction | None = None
    # standard errors, not a fraction: D_f's accuracy above what unseen rows of its classes get
    max_forget_accuracy_excess_se: Annotated[float, Strict()] | None = Field(
        None, ge=0.0, le=100.0, allow_inf_nan=False
    )


RETRAIN_ABOVE_DOC = (
    "a deletion that takes at least this share of the training samples the model has left is retrained "
    "exactly (the retrain method, on train_recipe) instead of unlearned: a run is sized per forget sample, "
    "so a large deletion costs up to a retrain and closes less of its gap (README, Large deletions); a "
    "retrain re-initialises the network, so leave this unset for a model fine-tuned from pretrained "
    "weights; null = never"
)
RETRAIN_ABOVE_CLASS_DOC = (
    "a deletion that takes at least this share of some class's training samples left, without taking "
    "the class whole, is retrained exactly (the retrain method, on train_recipe) instead of unlearned: "
    "a deep network retrained on a tenth of a class learns it far worse than the unlearning run's "
    "estimate of a retrain says, and the run leaves most of such rows recognised (README, Where it "
    "falls short); a class taken whole is forgotten as a retrain forgets it and is not counted; null = "
    "never"
)


NOT_NULL = {  # what to send instead of null, per field of ModelUpdate
    "default_method": "name a method, or leave the field out",
    "default_params": "a param sent as null goes back to its default; leave the field out to keep all",
    "gates": "a gate sent as null is removed; leave the field out to keep all",
    "fallback_methods": "send [] for none, or leave the field out",
    "train_recipe": "send {} for the retrain method's defaults, or leave the field out",
}


class ModelUpdate(BaseModel):
    """An admin's change of a model's unlearning policy; fields left out stay as they are. `gates` and
    `default_params` are merged key by key (JSON Merge Patch): a key sent replaces that key, a key sent as
    null removes it (a param goes back to the method's default), keys left out stay. A new
    `default_method` starts from its own defaults plus the `default_params` sent."""

    model_config = ConfigDict(extra="forbid")

    # None only as "left out", never a value: the schema shows no null (a null sent is refused,
    # ``_not_null``), and a wrong type gets one error rather than a second one saying null would do.
    # (The type-ignores: a default outside the type is what says "left out" without admitting null.)
    default_method: str = Field(None)  # type: ignore[assignment]
    default_params: dict[str, Any] = Field(None)  # type: ignore[arg-type]
    fallback_methods: list[str] = Field(None, max_length=5)  # type: ignore[arg-type]
    train_recipe: dict[str, Any] = Field(None)  # type: ignore[arg-type]
    gates: Gates = Field(None)  # type: ignore[assignment]
    time_limit_seconds: Seconds | None = Field(
        None,
        description="stop a job on this model after this many seconds (at most the service's "
        "UNLEARN_JOB_TIME_LIMIT_SECONDS, which applies when unset)",
    )
    retrain_above_share: Share | None = Field(None, description=RETRAIN_ABOVE_DOC)
    retrain_above_class_share: ClassShare | None = Field(None, description=RETRAIN_ABOVE_CLASS_DOC)

    @field_validator(
        "default_method", "default_params", "fallback_methods", "train_recipe", "gates", mode="before"
    )
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        """A null (or an empty method name) here was taken for "no change", yet audited as a change (a
        probe). null is meaningful for time_limit_seconds and the retrain shares only."""
        if value is None or value == "":
            what = NOT_NULL.get(info.field_name or "", "leave the field out")
            raise ValueError(f"cannot be {'null' if value is None else 'empty'}: {what}")
        return value


class ModelCreate(BaseModel):
    """The `spec` part of a model registration (the `checkpoint` part is the safetensors file)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    architecture: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        description="a built-in (`mlp`, `small_cnn`, `resnet18_cifar`), `torchvision:<builder>` (e.g. "
        "`torchvision:resnet18`), `timm:<name>` (e.g. `timm:resnet10t`), `plugin:<name>` (an "
        "architecture the operator installed in the entry-point group `unlearn.architectures`) or "
        "`hf:sequence-classification` (a transformers model built from its config.json: "
        "`arch_kwargs.config` or the `config` file); built with no pretrained weights: the weights are "
        "the uploaded checkpoint"
    )
    arch_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of the builder (besides num_classes, which is passed for you)",
    )
    num_classes: int = Field(ge=2, le=100_000, strict=True)  # "10" and 10.0 were read as 10
    train_dataset: str = Field(description="id of a registered dataset")
    test_dataset: str = Field(description="id of a registered dataset")
    heldout_dataset: str | None = Field(
        None,
        description="id of a registered dataset the unlearning method may calibrate on (never scored); "
        "without one, half the test set (by a hash of each sample ID) calibrates and the other half is "
        "the only data the metrics and gates read",
    )
    default_method: str = "ugradsl_plus"
    default_params: dict[str, Any] = Field(default_factory=dict)
    fallback_methods: list[str] = Field(default_factory=list, max_length=5)
    train_recipe: dict[str, Any] = Field(default_factory=dict, description="used by the `retrain` method")
    gates: Gates = Field(
        default_factory=Gates,
        description="left out: `max_test_accuracy_drop` 0.1 where at least 100 test rows score the "
        "model, so a run that wrecks it is not published; `{}` for none",
    )
    time_limit_seconds: Seconds | None = Field(
        None,
        description="stop a job on this model after this many seconds (at most the service's "
        "UNLEARN_JOB_TIME_LIMIT_SECONDS, which applies when unset)",
    )
    retrain_above_share: Share | None = Field(None, description=RETRAIN_ABOVE_DOC)
    retrain_above_class_share: ClassShare | None = Field(None, description=RETRAIN_ABOVE_CLASS_DOC)
