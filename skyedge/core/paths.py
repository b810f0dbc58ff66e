"""Where every stage writes: the files under data/<stage>/, named once.

dvc.yaml passes each stage its directories (`--ingest data/ingest --out data/embed`); the file
names inside them live here, and stages, flows, the CLI and the benchmarks all read them from
here. tests/test_dvc_pipeline.py checks that every output dvc.yaml declares is a path named here.

    Workspace(".").evaluate.metrics   ->  data/evaluate/metrics.json
    Prune(d).onnx("pruned_sparse")    ->  d/pruned_sparse.onnx
"""

from __future__ import annotations

from pathlib import Path

STAGES: tuple[str, ...] = ("fleet", "ingest", "attend", "embed", "distill", "prune", "quantize", "evaluate", "package")


class File:
    """A file name inside a stage directory: `StageDir.samples` is the path, the class attribute the name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, stage: StageDir | None, owner: type) -> Path | str:
        return self.name if stage is None else stage.dir / self.name


class StageDir:
    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)


class Fleet(StageDir):
    snapshot = File("snapshot.json")


class Ingest(StageDir):
    samples = File("samples.csv")
    windows = File("windows.npy")
    images = File("images.npy")
    normalisation = File("normalisation.json")
    quarantine = File("quarantine.csv")
    report = File("report.json")
    data_docs = File("data-docs")


class Attend(StageDir):
    onnx = File("attention.onnx")  # the sky mask net: frame RGB / 255 in, sky probability out
    boxes = File("boxes.npy")  # [M, 4] float32 crop box per ingest image (skyedge.core.crop: fractions)
    history = File("history.csv")
    metrics = File("metrics.json")
    preview = File("preview.png")  # a few val/test frames: true mask, predicted mask, crop box


class Embed(StageDir):
    teacher_module = File("teacher.pt")
    teacher_onnx = File("teacher.onnx")
    history = File("history.csv")
    metrics = File("metrics.json")


class Distill(StageDir):
    MODELS = ("student", "student_alone")  # with and without the teacher: the KD gain is measured
    history = File("history.csv")
    metrics = File("metrics.json")

    def module(self, name: str) -> Path:
        return self.dir / f"{name}.pt"

    def onnx(self, name: str) -> Path:
        return self.dir / f"{name}.onnx"


class Prune(StageDir):
    VARIANTS = ("pruned", "pruned_sparse", "pruned_lowrank")  # structured (ships), unstructured, low-rank
    history = File("history.csv")
    metrics = File("metrics.json")

    def module(self, name: str) -> Path:
        return self.dir / f"{name}.pt"

    def onnx(self, name: str) -> Path:
        return self.dir / f"{name}.onnx"


class Quantize(StageDir):
    candidates = File("candidates")
    int8 = File("model_int8.onnx")
    shipped = File("shipped.onnx")
    report = File("report.json")

    def candidate(self, name: str) -> Path:
        return self.dir / "candidates" / f"{name}.onnx"


class Evaluate(StageDir):
    summary = File("summary.json")  # the DVC metric: headline numbers of the shipped model
    metrics = File("metrics.json")
    variants = File("variants.csv")
    report = File("report.md")
    pareto = File("pareto.png")
    confusion_shipped = File("confusion_shipped.png")
    confusion_teacher = File("confusion_teacher.png")
    reliability = File("reliability.png")
    skill = File("skill.png")


class Package(StageDir):
    """A model package: what the registry stores and a device installs (ARCHITECTURE §5)."""

    model = File("model.onnx")
    container = File("model.skc")  # model.onnx entropy coded (skyedge.release.container): what stations download
    canary = File("canary.npz")
    attention = File("attention.onnx")  # with attend.student_input = crop: the station runs it before model.onnx
    manifest = File("manifest.json")
    signature = File("manifest.sig.json")


class Workspace:
    """A project checkout: its stage directories under data/."""

    def __init__(self, root: Path | str = ".") -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.params = self.root / "params.yaml"
        self.fleet = Fleet(self.data / "fleet")
        self.ingest = Ingest(self.data / "ingest")
        self.attend = Attend(self.data / "attend")
        self.embed = Embed(self.data / "embed")
        self.distill = Distill(self.data / "distill")
        self.prune = Prune(self.data / "prune")
        self.quantize = Quantize(self.data / "quantize")
        self.evaluate = Evaluate(self.data / "evaluate")
        self.package = Package(self.data / "package")
