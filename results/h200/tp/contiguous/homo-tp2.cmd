# kvxfer-send -t ucx --ucx-op put -m llama-3.1-70b -g block --tp 2 -p 1024,8192 -n 10
