"""``nst-jax serve``: a local web studio that shows a stylization as it forms.

The page (``static/``) uploads a content image and style images, picks a preset and the main
knobs, and watches the run over a WebSocket: every compiled chunk pushes the current image, the
loss and the rate. The server is small and split by concern:

* :mod:`nst_jax.web.forms`: turns the page's form fields into a validated :class:`StyleConfig`
  and bounds every number (no aiohttp needed);
* :mod:`nst_jax.web.jobs`: the job queue and its single worker thread, which runs
  :func:`nst_jax.stylize` (the same engine as the CLI) with an ``on_chunk`` hook for previews,
  Stop and cancellation;
* :mod:`nst_jax.web.uploads`: a job request's fields and images, streamed within the limits and
  decoded with :mod:`nst_jax.image_io`'s checks;
* :mod:`nst_jax.web.app`: the aiohttp application (routes, WebSocket sessions, errors);
* :mod:`nst_jax.web.server`: the work directory, the listening site, ``serve`` and a
  background-thread server for tests and scripts.

Needs the ``web`` extra (``pip install 'nst-jax[web]'``, i.e. aiohttp).
"""
