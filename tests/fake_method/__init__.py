"""A method defined only for the tests, outside tfreid: it exercises the whole method
contract (`tfreid.models.contract`) — clips + 2-channel flow + keypoints, two named triplet
terms of different margins on different outputs (one on the model's own distance), a
regulariser on an attention output brought as a loss type of its own, an add_loss term, a
learned distance, a tracklet merge that is not the mean, a frozen sub-module with
BatchNorm, and a scalar of its own — without any file of tfreid naming it."""
