"""sortflow's library: packages by layer, with `cli.py` as the entry point (docs: Development, Layout).

`from components import create_pipeline` for prediction.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so that `import components.<step>` does not pull in onnxruntime and torch.
    if name == "create_pipeline":
        from components.steps.predict import create_pipeline

        return create_pipeline
    raise AttributeError(name)
