"""The probes' answer comparison; it lives with the other answer rules in :mod:`frankenlab.grading.same`."""

from frankenlab.grading.same import IOU_THRESHOLD, Answer, box_iou, normalize, same_answer

__all__ = ["IOU_THRESHOLD", "Answer", "box_iou", "normalize", "same_answer"]
