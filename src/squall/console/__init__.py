"""The web console: a static single-page app (``static/``) served by the platform at /console.

The page holds no data: it signs in with an API key (kept in the tab's sessionStorage) and reads
everything through the control API with that key, so it shows exactly what the key may see.
``assets`` serves the files; ``stats`` computes the charts' time series.
"""
