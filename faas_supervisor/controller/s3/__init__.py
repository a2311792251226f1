"""The controller's S3 endpoint: its folder store served over the S3 API (SPEC 7.2).

`sigv4` and `sigv2` check signatures, `body` receives bodies (and checks signed chunks),
`objects` is the store as S3 objects, `answers` S3's XML, `errors` S3's error codes,
`digits` the numbers S3 takes, `app` the aiohttp app and its handlers.
"""
