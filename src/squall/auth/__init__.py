"""Authentication of AWS-style clients (boto3, the AWS CLI): SigV4 request verification, shared
by the S3 API (``squall.storage``) and the Lambda API (``squall.lambda_api``)."""
