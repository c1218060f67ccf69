"""The environment the Makefile builds: one onnxruntime build only, and the pinned torch."""

from importlib import metadata


def installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_never_both_onnxruntime_builds() -> None:
    assert installed("onnxruntime") != installed("onnxruntime-gpu")


def test_torch_is_the_pinned_release() -> None:
    assert metadata.version("torch").split("+")[0] == "2.13.0"
