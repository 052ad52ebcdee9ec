"""Model bundles: the signed zip the trainer exports and the runtimes that execute it on the kiosk.

:mod:`device.model.bundle` verifies a bundle (layout, sizes, signature, manifest, hash) without
deserializing anything from the model; :mod:`device.model.runtimes` then turns a verified bundle
into a :class:`~device.model.runtimes.ModelRuntime`.
"""
