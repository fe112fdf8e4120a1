# kvxfer-send -t ucx --ucx-op get --ucx-err-mode peer -m llama-3.1-70b -g block -p 1024 -n 5 -w 1 --block-table random:1
