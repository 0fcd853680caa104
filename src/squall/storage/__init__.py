"""The S3-compatible object store: buckets and objects of each tenant, served by ``squall up`` on
its own listener (``--s3-port``), whose writes fire ``storage`` triggers.

Parts: ``names`` (bucket and key rules), ``errors`` (S3's error documents), ``xmlio`` (request and
response XML), ``layout`` (object files under ``<data-dir>/objects``), ``body`` (request bodies:
plain, aws-chunked, checksums), ``events`` (storage triggers and S3's notification records),
``service`` and ``multipart`` (the operations), ``app`` (the HTTP edge: addressing, SigV4,
dispatch). SQL lives in ``squall.store.objects``.
"""
