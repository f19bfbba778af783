"""The `v4l2` frame-grabber driver (Video4Linux2 through linuxpy, the optional extra [v4l2]).

`capture` is the buffer cycle against a small device interface, `pixels` turns a buffer into
an image, `driver` is the Driver, and `linuxpy_device` implements the interface on a real
/dev/videoN. Only the last imports linuxpy, and only when the device is opened, so the driver's
options can be checked, and its buffer handling tested with a fake device, without it.
"""
