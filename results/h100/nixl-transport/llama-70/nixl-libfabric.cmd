# kvxfer-send -t nixl --nixl-backend LIBFABRIC -m llama-3.1-8b -g block -p 1024 -n 2
