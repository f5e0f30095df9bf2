"""Stage two: train a student on cached mels, regularised toward cached teacher embeddings.

:mod:`~pipeline.train.loop` is the training loop (:func:`pipeline.train.loop.train`); around it:

* :mod:`~pipeline.train.config`, :mod:`~pipeline.train.presets` — the settings of a run and the
  paper's values per dataset and teacher;
* :mod:`~pipeline.train.data` — the stores and splits of a run and their loaders, over
  :mod:`~pipeline.train.loader` (dataset, collate) and :mod:`~pipeline.train.samplers` (clip
  orders);
* :mod:`~pipeline.train.steps` — a training epoch and validation, with
  :mod:`~pipeline.train.augment` (SpecAugment, mixup), :mod:`~pipeline.train.losses` and
  :mod:`~pipeline.train.regularisers` (the objective), :mod:`~pipeline.train.probe` (the KD
  linear probes);
* :mod:`~pipeline.train.schedule` — learning rate, early stopping and best epoch;
* :mod:`~pipeline.train.checkpoints` — the run folder;
* :mod:`~pipeline.train.distributed` — several processes under ``torchrun``.
"""
