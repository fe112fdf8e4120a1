# kvxfer-send -t nixl --nixl-op read -m llama-3.1-70b -g block -p 1024 -n 5 -w 1 --block-table random:1
