"""Example code that study files under examples/ name (``trainable: examples.custom_loop:train``)."""
