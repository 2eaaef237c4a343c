#!/usr/bin/env python3
"""An independent Blob client for hrl's tests: the Azure SDK for Python
(azure-storage-blob, installed by scripts/test.sh into target/pydeps)
against the Azurite of AZURITE_BLOB_STORAGE_URL.

    azure_blob.py info CONTAINER BLOB [SNAPSHOT]      -> JSON on stdout
    azure_blob.py download CONTAINER BLOB OUT [SNAPSHOT]
    azure_blob.py snapshots CONTAINER BLOB            -> JSON on stdout
    azure_blob.py list CONTAINER PREFIX               -> JSON names

`info` prints the blob type, size, metadata and the written page ranges
([start, end) pairs) as the service reports them.
"""
import json
import os
import sys

from azure.storage.blob import BlobServiceClient

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def service():
    base = os.environ["AZURITE_BLOB_STORAGE_URL"].rstrip("/")
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={KEY};BlobEndpoint={base}/devstoreaccount1;"
    )
    # Azurite 3 refuses API versions newer than it knows; this one has
    # everything used here.
    return BlobServiceClient.from_connection_string(conn, api_version="2021-12-02")


def main(argv):
    cmd, container, blob = argv[1], argv[2], argv[3]
    svc = service()
    if cmd == "info":
        snap = argv[4] if len(argv) > 4 else None
        b = svc.get_blob_client(container, blob, snapshot=snap)
        p = b.get_blob_properties()
        ranges = [[r.start, r.end + 1] for r in b.list_page_ranges() if not r.cleared]
        print(json.dumps({
            "blob_type": str(p.blob_type.value if hasattr(p.blob_type, "value") else p.blob_type),
            "size": p.size,
            "metadata": p.metadata,
            "ranges": ranges,
        }))
    elif cmd == "download":
        out = argv[4]
        snap = argv[5] if len(argv) > 5 else None
        b = svc.get_blob_client(container, blob, snapshot=snap)
        with open(out, "wb") as f:
            b.download_blob(max_concurrency=4).readinto(f)
    elif cmd == "list":
        # `blob` is a name prefix here.
        c = svc.get_container_client(container)
        print(json.dumps([x.name for x in c.list_blobs(name_starts_with=blob)]))
    elif cmd == "snapshots":
        c = svc.get_container_client(container)
        snaps = [
            {"snapshot": x.snapshot, "metadata": x.metadata}
            for x in c.list_blobs(name_starts_with=blob, include=["snapshots", "metadata"])
            if x.name == blob and x.snapshot
        ]
        print(json.dumps(snaps))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
