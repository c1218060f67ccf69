"""The desktop client (``mirage-ray client``): protocol-v1 over ``websockets``, devices, file-to-file.

``wire`` speaks the protocol, ``pacing`` holds the pure pieces (audio chunking, send windows, playout buffer),
``media_io`` reads and writes files, ``files`` runs a file through the server, ``devices`` runs camera and microphone
live, ``token`` finds a token. Optional packages (the ``client`` extra) are imported only where a feature needs them.
"""
