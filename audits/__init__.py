"""Audits: questions asked of an unlearned model beyond its outputs, each asked of the ideal model
(retrained without D_F) in the same way, with the same seed and budget, so that the answer reads
as a gap to it.

Hidden knowledge (audits/hidden.py): is it gone, or only hidden?

    relearn       forget accuracy after a short fine-tune on D_R only (no forget sample)
    relearn_time  fine-tuning rounds on D_R plus a seeded tenth of D_F until the other nine
                  tenths are as accurate as under the original model (SCRUB's readout)
    probe         a linear probe on the frozen features: its accuracy on D_F
    cka           linear CKA between the model's and the ideal model's features on D_F

Every audit works on a copy (the model it is given is never changed), draws from its own seeded
generators and returns plain floats; `run_audits` runs a list of them by name.

    found = run_audits(["relearn", "relearn_time"], model, data, split, seed=1, original=..., ideal=...)
"""

from __future__ import annotations

from audits.hidden import AUDITS, POLARITY, AuditBudget, run_audits  # noqa: F401
