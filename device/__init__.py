"""The kiosk daemon: capture, pose, features, inference, MQTT, status page.

It is also the single home of the keypoint model and the feature code, which the trainer imports.
"""

__version__ = "0.1.0"
