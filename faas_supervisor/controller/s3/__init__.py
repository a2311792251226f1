"""The controller's S3 endpoint: its folder store served over the S3 API (SPEC 7.2).

`sigv4` checks signatures, `body` receives bodies, `objects` is the store as S3 objects,
`answers` S3's XML, `app` the aiohttp app and its handlers, `keys` the endpoint's keys.
"""
