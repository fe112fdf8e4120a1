# kvxfer-send -t ucx --ucx-op put --ucx-err-mode peer -m llama-3.1-70b -g block -p 1024,8192,32768 -n 10 -w 2 --block-table random:1
