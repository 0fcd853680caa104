"""Lambda's Invoke API and control-plane calls, so boto3 and the AWS CLI manage and call Squall.

Paths, shapes and error types follow botocore's service model for ``lambda`` 2015-03-31.
Requests are signed with SigV4 using a Squall API key as the AWS pair (``access_key_id`` and
``secret_access_key`` from ``squall key create --json``); the signature is checked by
``squall.auth.sigv4`` and the key's tenant is the account everything happens in.

How Lambda's versions map onto Squall's
---------------------------------------
Squall versions are immutable and numbered on every deploy; Lambda has a mutable ``$LATEST``
and numbered versions made by PublishVersion. Here:

* Every CreateFunction, UpdateFunctionCode and UpdateFunctionConfiguration is a Squall deploy:
  it creates the next immutable numbered version (unless the content is unchanged) and that
  version becomes ``$LATEST``. So numbered versions appear without PublishVersion, one per change.
* ``$LATEST`` is always the newest number. Describing ``$LATEST`` says ``Version: "$LATEST"``
  (as Lambda does); invoking it reports the number that ran in ``X-Amz-Executed-Version``.
* PublishVersion creates nothing: it returns the number ``$LATEST`` already has (and may set
  that version's Description). ``CodeSha256`` and ``RevisionId`` are checked if given.
* ``Publish: true`` on Create/UpdateFunctionCode answers with the number instead of ``$LATEST``.
* ListVersionsByFunction lists ``$LATEST`` and then every numbered version.
* DeleteFunction with a Qualifier (deleting one version) is rejected: Squall keeps every
  version until the function is deleted.
* Aliases point at a number or ``$LATEST``, with ``RoutingConfig.AdditionalVersionWeights``
  splitting traffic (``squall.routing``). Rolling back is moving the alias.

Supported fields
----------------
CreateFunction: FunctionName, Code.ZipFile, Handler, Runtime (python3.x), MemorySize, Timeout,
Environment.Variables, EphemeralStorage.Size, Description, Publish, PackageType (Zip),
Architectures (the host's), Role (required by the API, accepted and ignored: Squall has no IAM,
a function acts with its tenant's rights). UpdateFunctionConfiguration: the same configuration
fields plus RevisionId. UpdateFunctionCode: ZipFile, Publish, RevisionId, Architectures.
Everything else (VpcConfig, Layers, DeadLetterConfig, KMSKeyArn, TracingConfig, Tags,
FileSystemConfigs, ImageConfig, SnapStart, S3 code locations, ...) is rejected with
InvalidParameterValueException naming the fields. Invoke rejects X-Amz-Client-Context, and an
Event invocation of a version or alias (the async queue runs $LATEST).
Unset Timeout and MemorySize take Squall's defaults (30 s, 128 MB), not Lambda's 3 s.
"""
