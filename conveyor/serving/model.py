"""One ONNX scorer for serving and the review stage: a registry model in an onnxruntime session.

The ONNX file describes itself (metadata ``conveyor.task``, ``conveyor.classes``,
``conveyor.image_size``); the task kind of ``conveyor.task`` names the outputs the graph must have,
says whether it takes a batch of images, and decodes the raw outputs (numpy only, no torch).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conveyor import kinds
from conveyor.core.io import onnx_session
from conveyor.serving.prediction import Prediction
from conveyor.serving.preprocess import DecodedRequest, decode_file

SCORE_BATCH = 64  # images per call for graphs with a batch axis


class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageOutputs:
    """The raw outputs of one image of :meth:`LoadedModel.run_files` (``outputs`` None: the file
    could not be read any more) and the image's original size."""

    index: int
    outputs: dict[str, np.ndarray] | None
    width: int
    height: int


class LoadedModel:
    """One registry version in an onnxruntime session, described by its ONNX metadata."""

    def __init__(self, version: int, path: str | Path, threads: int = 1):
        self.version = int(version)
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"v{version}: {self.path} does not exist")
        try:
            self.session = onnx_session(self.path, threads)
        except Exception as err:  # noqa: BLE001 - any damaged or foreign file
            raise ModelLoadError(f"v{version}: onnxruntime cannot load {self.path}: {err}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.task = meta["conveyor.task"]
            self.classes = [str(c) for c in json.loads(meta["conveyor.classes"])]
            self.image_size = int(meta["conveyor.image_size"])
        except (KeyError, ValueError, TypeError) as err:
            raise ModelLoadError(f"v{version}: {self.path} lacks conveyor metadata ({err}); export it with "
                                 f"conveyor.model.evaluate") from None
        try:
            self.kind = kinds.get(self.task)
        except ValueError:
            raise ModelLoadError(f"v{version}: unknown task {self.task!r} in {self.path}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        missing = [o for o in self.kind.onnx_outputs if o not in self.output_names]
        if missing:
            raise ModelLoadError(f"v{version}: a {self.task} graph needs outputs {missing}; it has {self.output_names}")

    @property
    def batch_size(self) -> int:
        """Images per call: ``SCORE_BATCH`` for a graph with a batch axis whose kind batches, else 1."""
        dynamic = not isinstance(self.session.get_inputs()[0].shape[0], int)
        return SCORE_BATCH if dynamic and self.kind.batchable else 1

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs by name for the input batch ``x`` (N, 3, S, S)."""
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))

    def run(self, requests: Sequence[DecodedRequest]) -> list[dict[str, np.ndarray]]:
        """Each image's raw outputs (with a batch axis of 1), ``batch_size`` images per call."""
        out: list[dict[str, np.ndarray]] = []
        step = self.batch_size
        for start in range(0, len(requests), step):
            chunk = requests[start:start + step]
            outs = self.outputs(np.concatenate([r.input(self.image_size) for r in chunk]))
            if step == 1:
                out.append(outs)
            else:
                out.extend({k: v[j:j + 1] for k, v in outs.items()} for j in range(len(chunk)))
        return out

    def run_files(self, paths: Sequence[str], max_pixels: int) -> Iterator[ImageOutputs]:
        """The raw outputs of image files (decoded as serving and training decode them), in order,
        ``batch_size`` images per call; a file that cannot be read any more has ``outputs`` None."""
        step = self.batch_size
        for start in range(0, len(paths), step):
            chunk: list[tuple[int, DecodedRequest]] = []
            for i in range(start, min(start + step, len(paths))):
                try:
                    chunk.append((i, decode_file(paths[i], max_pixels)))
                except Exception:  # noqa: BLE001 - the file changed since ingest: left unscored
                    yield ImageOutputs(i, None, 0, 0)
            if not chunk:
                continue
            for (i, r), outs in zip(chunk, self.run([r for _, r in chunk])):
                yield ImageOutputs(i, outs, r.width, r.height)

    def decode(self, outputs: dict[str, np.ndarray], width: int, height: int) -> Prediction:
        """The kind's answer for one image's outputs."""
        return self.kind.decode_prediction(outputs, self.classes, self.image_size, width, height)

    def predict(self, request: DecodedRequest) -> Prediction:
        return self.decode(self.outputs(request.input(self.image_size)), request.width, request.height)

    def warm_up(self, runs: int = 3) -> None:
        """A few calls on a synthetic image, so the first request does not pay for allocation."""
        from PIL import Image

        rng = np.random.default_rng(self.version)
        pixels = rng.integers(0, 256, (self.image_size, self.image_size, 3), dtype=np.uint8)
        request = DecodedRequest(Image.fromarray(pixels, "RGB"), {})
        for _ in range(max(1, runs)):
            self.predict(request)
