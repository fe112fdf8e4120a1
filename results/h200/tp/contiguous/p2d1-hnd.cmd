# P=2 D=1 --kv-layout hnd -t ucx --ucx-op put -m llama-3.1-70b -g block -p 1024,8192 -n 10
kvxfer-send --connect 127.0.0.1:33289 --prefill-tp 2 --decode-tp 1 --prefill-rank 0 --kv-layout hnd --memory gpu --device 0 -t ucx --ucx-op put -m llama-3.1-70b -g block -p 1024,8192 -n 10
kvxfer-send --connect 127.0.0.1:33289 --prefill-tp 2 --decode-tp 1 --prefill-rank 1 --kv-layout hnd --memory gpu --device 0 -t ucx --ucx-op put -m llama-3.1-70b -g block -p 1024,8192 -n 10
