"""Dataset adapters: each turns a dataset release (or a generator) into a :class:`Manifest`.

One module (or package) per source registers its builder with ``@DATASETS.register``; the
source's name is the module's file name (``openmic.py`` → ``openmic``, ``csv.py`` → ``csv``,
``demo/`` → ``demo``). A builder is a function taking keyword options (``root``, ``csv``,
``out_dir``, ``clips``, ``seed``, …; the ones it does not use are ignored) and returning a
validated manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.data.manifest import Manifest
from pipeline.registry import Registry

DatasetBuilder = Callable[..., Manifest]

DATASETS: Registry[DatasetBuilder] = Registry("dataset source", __name__)


def list_datasets() -> list[str]:
    """The dataset sources, sorted, without importing their modules.

    Returns
    -------
    list of str
        Names accepted by :func:`build_manifest`.
    """
    return DATASETS.names()


def build_manifest(source: str, **options: Any) -> Manifest:
    """Run the ``source`` adapter; ``None``-valued options are dropped so defaults apply.

    Parameters
    ----------
    source : str
        A name from :func:`list_datasets`.
    **options
        Keyword options of the builder (``root``, ``csv``, ``out_dir``, ``clips``, ``seed``, …);
        those it does not use are ignored.

    Returns
    -------
    Manifest
        The validated manifest of the dataset.

    Raises
    ------
    ValueError
        If ``source`` is not a dataset source (the message lists the choices).
    """
    builder = DATASETS.get(source)
    return builder(**{k: v for k, v in options.items() if v is not None})
