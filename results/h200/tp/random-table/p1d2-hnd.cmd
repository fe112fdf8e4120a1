# P=1 D=2 --kv-layout hnd -t ucx --ucx-op put -m llama-3.1-70b -g block --block-table random -p 1024,8192 -n 10
kvxfer-send --connect 127.0.0.1:39347 --connect 127.0.0.1:37937 --prefill-tp 1 --decode-tp 2 --prefill-rank 0 --kv-layout hnd --memory gpu --device 0 -t ucx --ucx-op put -m llama-3.1-70b -g block --block-table random -p 1024,8192 -n 10
