"""Example code that the study files under examples/ name (``examples.digits_cnn:build``,
``examples.custom_loop:train``, ``examples.patients:load``)."""
