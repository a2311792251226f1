"""S3's errors: a code, its HTTP status (one table, as S3's error list gives them), a
message. Handlers raise `S3Error`; the app answers it as S3's XML `<Error>`."""

from __future__ import annotations

from http import HTTPStatus

STATUS: dict[str, int] = {
    "AccessDenied": HTTPStatus.FORBIDDEN,
    "AuthorizationHeaderMalformed": HTTPStatus.BAD_REQUEST,
    "AuthorizationQueryParametersError": HTTPStatus.BAD_REQUEST,
    "BadDigest": HTTPStatus.BAD_REQUEST,
    "BucketAlreadyOwnedByYou": HTTPStatus.CONFLICT,
    "BucketNotEmpty": HTTPStatus.CONFLICT,
    "EntityTooSmall": HTTPStatus.BAD_REQUEST,
    "IncompleteBody": HTTPStatus.BAD_REQUEST,
    "InternalError": HTTPStatus.INTERNAL_SERVER_ERROR,
    "InvalidAccessKeyId": HTTPStatus.FORBIDDEN,
    "InvalidArgument": HTTPStatus.BAD_REQUEST,
    "InvalidBucketName": HTTPStatus.BAD_REQUEST,
    "InvalidDigest": HTTPStatus.BAD_REQUEST,
    "InvalidPart": HTTPStatus.BAD_REQUEST,
    "InvalidPartOrder": HTTPStatus.BAD_REQUEST,
    "InvalidRange": HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
    "InvalidRegion": HTTPStatus.BAD_REQUEST,  # MinIO's: CreateBucket in another region
    "InvalidRequest": HTTPStatus.BAD_REQUEST,
    "KeyTooLongError": HTTPStatus.BAD_REQUEST,
    "MalformedXML": HTTPStatus.BAD_REQUEST,
    "MetadataTooLarge": HTTPStatus.BAD_REQUEST,
    "MethodNotAllowed": HTTPStatus.METHOD_NOT_ALLOWED,
    "MissingContentLength": HTTPStatus.LENGTH_REQUIRED,
    "NoSuchBucket": HTTPStatus.NOT_FOUND,
    "NoSuchKey": HTTPStatus.NOT_FOUND,
    "NoSuchUpload": HTTPStatus.NOT_FOUND,
    "NotImplemented": HTTPStatus.NOT_IMPLEMENTED,
    "PreconditionFailed": HTTPStatus.PRECONDITION_FAILED,
    "RequestTimeTooSkewed": HTTPStatus.FORBIDDEN,
    "SignatureDoesNotMatch": HTTPStatus.FORBIDDEN,
    "XAmzContentSHA256Mismatch": HTTPStatus.BAD_REQUEST,
    # MinIO's codes for what a folder cannot hold (a key under another key, and a key
    # that is a folder of other keys): S3 itself has no such limit.
    "XMinioParentIsObject": HTTPStatus.BAD_REQUEST,
    "XMinioObjectExistsAsDirectory": HTTPStatus.CONFLICT,
}


class S3Error(Exception):
    def __init__(self, code: str, message: str, resource: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.resource = resource

    @property
    def status(self) -> int:
        return STATUS.get(self.code, HTTPStatus.BAD_REQUEST)
