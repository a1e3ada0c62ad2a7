"""What the distillation methods (WENO, Distill-to-Label) share: a teacher MIL model and an instance
student, trained on bags held in memory.

- :mod:`~histokd.methods.distill.bags`: :class:`Bags` (bags in memory), ``as_bags``, ``prepare_bags``
  (validation hold-out, standardisation), ``pad_bags``;
- :mod:`~histokd.methods.distill.rules`: the pseudo-label rules (min-max teacher evidence, soft targets,
  hard positive mining), the weighted soft cross-entropy, the max-tile bag rule, the negative class;
- :mod:`~histokd.methods.distill.training`: torch threads, BatchNorm refresh / eval, the student's
  minibatch schedule;
- :mod:`~histokd.methods.distill.labeler`: :class:`InstanceLabeler` (teacher + student, saved and loaded
  from a model folder), the module builders and the validation instance threshold.

Bag AUC and the F1-optimal threshold are :mod:`histokd.evaluate.metrics`'s.
"""
