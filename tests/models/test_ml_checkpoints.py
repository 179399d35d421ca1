import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model

from models.architectures import build_model, model_input_shape
from models.checkpoints import (
    ChecksumMismatch,
    file_sha256,
    load_checkpoint,
    load_weights,
    read_header,
    save_checkpoint,
)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("small_cnn", {"image_size": 8, "num_classes": 10}),
        ("resnet18_cifar", {"num_classes": 4}),
        ("mlp", {}),
    ],
)
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path, name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    x = torch.randn(3, *model_input_shape(name, **kwargs))
    model.train()
    model(x)  # moves BatchNorm running statistics away from their init
    model.eval()
    path = tmp_path / "m.safetensors"
    digest = save_checkpoint(model, path, architecture=name, kwargs=kwargs, num_classes=4, extra={"v": 2})
    assert digest == file_sha256(path) and len(digest) == 64
    loaded, header = load_checkpoint(path)
    assert header["architecture"] == name and header["kwargs"] == kwargs and header["extra"] == {"v": 2}
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoint_hash_changes_when_a_weight_changes(tmp_path: Path) -> None:
    model = build_model("mlp", hidden=(4,))
    d1 = save_checkpoint(
        model, tmp_path / "a.safetensors", architecture="mlp", kwargs={"hidden": [4]}, num_classes=10
    )
    with torch.no_grad():
        model.classifier.bias[0] += 1
    d2 = save_checkpoint(
        model, tmp_path / "b.safetensors", architecture="mlp", kwargs={"hidden": [4]}, num_classes=10
    )
    assert d1 != d2


def test_checkpoint_without_header_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "raw.safetensors"))
    with pytest.raises(ValueError, match="not an unlearning-service checkpoint"):
        read_header(tmp_path / "raw.safetensors")


def test_a_checkpoint_whose_bytes_differ_from_its_recorded_sha256_refuses_to_load(tmp_path: Path) -> None:
    model = build_model("mlp", hidden=(4,))
    path = tmp_path / "v2.safetensors"
    digest = save_checkpoint(model, path, architecture="mlp", kwargs={"hidden": [4]}, num_classes=10)
    load_checkpoint(path, sha256=digest)  # the recorded hash: loads
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in the last weight
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumMismatch, match="refusing to load"):
        load_weights(build_model("mlp", hidden=(4,)), path, sha256=digest)


def test_the_writer_leaves_no_temporary_file_and_replaces_atomically(tmp_path: Path) -> None:
    model = build_model("mlp", hidden=(4,))
    path = tmp_path / "m.safetensors"
    first = save_checkpoint(model, path, architecture="mlp", kwargs={"hidden": [4]}, num_classes=10)
    with torch.no_grad():
        model.classifier.bias[0] += 1
    second = save_checkpoint(model, path, architecture="mlp", kwargs={"hidden": [4]}, num_classes=10)
    assert first != second and file_sha256(path) == second
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_load_weights_names_what_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    digest = save_checkpoint(
        build_model("mlp", hidden=(4,)), path, architecture="mlp", kwargs={"hidden": [4]}, num_classes=10
    )
    with pytest.raises(ValueError, match="does not fit the architecture"):
        load_weights(build_model("mlp", hidden=(4, 4)), path, sha256=digest)


def test_a_class_count_that_differs_is_named_as_one(tmp_path: Path) -> None:
    """A probe registered num_classes 5 over a 3-class checkpoint and read torch's 'size mismatch for
    classifier.weight: copying a param with shape ...'."""
    path = tmp_path / "m.safetensors"
    save_model(build_model("mlp", in_features=13, num_classes=3), str(path))
    with pytest.raises(
        ValueError, match=r"classifier.weight is \[3, \d+\] in the file, \[5, \d+\] in the arch"
    ) as e:
        load_weights(build_model("mlp", in_features=13, num_classes=5), path, sha256=None)
    assert "do num_classes and arch_kwargs match" in str(e.value)


def test_an_integer_tensor_where_the_architecture_holds_floats_is_refused_and_half_precision_is_cast(
    tmp_path: Path,
) -> None:
    """An int32 classifier.weight loaded as whole numbers and made a probe's model `ready` at 22%."""
    model = build_model("mlp", in_features=13, num_classes=3)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(
        {**tensors, "classifier.weight": tensors["classifier.weight"].to(torch.int32)}, str(tmp_path / "i")
    )
    with pytest.raises(ValueError, match="classifier.weight is I32 in the file, a float in the architecture"):
        load_weights(build_model("mlp", in_features=13, num_classes=3), tmp_path / "i", sha256=None)
    save_file({k: v.half() for k, v in tensors.items()}, str(tmp_path / "h"))
    loaded = build_model("mlp", in_features=13, num_classes=3)
    load_weights(loaded, tmp_path / "h", sha256=None)
    assert loaded.classifier.weight.dtype == torch.float32
    assert torch.equal(loaded.classifier.weight, tensors["classifier.weight"].half().float())


def test_names_behind_a_wrappers_prefix_are_pointed_out(tmp_path: Path) -> None:
    """DataParallel saves 'module.<name>': every tensor is both missing and unexpected."""
    model = build_model("mlp", in_features=13, num_classes=3)
    path = tmp_path / "m.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="start with 'module.'.*strip 'module.' from the names"):
        load_weights(build_model("mlp", in_features=13, num_classes=3), path, sha256=None)


def test_a_checkpoint_that_does_not_fit_on_disk_names_its_path_and_leaves_nothing(tmp_path: Path) -> None:
    """A full disk, made real with a file-size limit in a child process (SIGXFSZ ignored, so the write
    fails with EFBIG as a full disk fails with ENOSPC): the error a failed job shows names the file."""
    target = tmp_path / "ckpt" / "v2.safetensors"
    code = f"""
import resource, signal, sys, torch
from models.checkpoints import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    save_checkpoint(torch.nn.Linear(500, 500), {str(target)!r}, architecture="mlp", kwargs={{}},
                    num_classes=2)
except OSError as exc:
    print(exc)
    print("errno", exc.errno)
    sys.exit(3)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert f"could not write checkpoint {target}" in done.stdout and "too large" in done.stdout
    # the errno stays, so the worker tells a full volume (an outage) from a broken file (a failure)
    assert f"errno {errno.EFBIG}" in done.stdout, done.stdout
    assert list(target.parent.iterdir()) == []  # neither the checkpoint nor its temporary file
