"""float64 convolutions on the CPU: PyTorch's kernels against unfold + one large GEMM (the sweeps of the guaranteed
bound are float64 convolutions of batches of basis vectors). Prints GFLOP/s of each, forward and adjoint.

    python bench/conv_float64.py
"""
import time, torch, torch.nn.functional as F
torch.set_num_threads(1)
def t(fn, r=3):
    fn(); best=1e9
    for _ in range(r):
        a=time.perf_counter(); fn(); best=min(best,time.perf_counter()-a)
    return best
for (ci,co,k,s,p,h,B) in [(32,64,3,1,1,14,256),(32,32,4,2,1,28,256),(64,64,4,2,1,16,256),(32,64,3,1,1,16,256)]:
    w=torch.randn(co,ci,k,k,dtype=torch.float64); x=torch.randn(B,ci,h,h,dtype=torch.float64)
    ho=(h+2*p-k)//s+1
    fl=2*co*ci*k*k*ho*ho*B
    a=t(lambda: F.conv2d(x,w,None,s,p))
    def big():
        cols=F.unfold(x,(k,k),padding=p,stride=s)  # B, ci*k*k, L
        L=cols.shape[-1]
        c2=cols.transpose(0,1).reshape(ci*k*k,B*L)
        y=(w.reshape(co,-1)@c2).reshape(co,B,L).transpose(0,1)
        return y
    b=t(big)
    y=F.conv2d(x,w,None,s,p)
    def adj():
        return torch.nn.grad.conv2d_input(x.shape,w,y,s,p)
    c=t(lambda: F.conv_transpose2d(y,w,None,s,p,output_padding=(h+2*p-k)%s if s>1 else 0))
    def bigadj():
        yy=y.reshape(B,co,-1).transpose(0,1).reshape(co,-1)
        cols=(w.reshape(co,-1).T@yy).reshape(ci*k*k,B,-1).transpose(0,1)
        return F.fold(cols,(h,h),(k,k),padding=p,stride=s)
    d=t(bigadj)
    print((ci,co,k,s,h), "conv %.1f GF/s  unfold+GEMM %.1f  | convT %.1f  GEMM+fold %.1f"%(fl/a/1e9, fl/b/1e9, fl/c/1e9, fl/d/1e9))
