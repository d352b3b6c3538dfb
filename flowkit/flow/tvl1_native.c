/* The inner loop of OpenCV's Dual TV-L1 for one (pair, level, warp) task, fused for a CPU core.
 *
 * flowkit compiles this file once per machine (flowkit/flow/tvl1_native.py) and calls it through
 * ctypes, which releases the GIL, so several tasks run at once on plain threads. One sweep over the
 * rows does a whole iteration: the primal update of row y, then the dual update of row y-1 (which
 * needs the new u of rows y-1 and y), so u and p are updated in place and each pixel's state is
 * read and written once per iteration (64 B/px instead of the 88 of a two-kernel design).
 *
 * The arithmetic is the eager oracle's, term by term, in float32 (flowkit/flow/tvl1_ops.py; the
 * spec is section 3.6 of tvl1-algorithm.md). The build turns off FMA contraction so that every
 * product and sum is rounded as in the oracle; the norm is the double sqrt of the squares, as
 * OpenCV's double hypot; the stopping sum is accumulated in double (section 7.1: "float64
 * accumulation is fine"), in a fixed order, so results never depend on threads or batching.
 */
#include <math.h>
#include <stddef.h>

#define FLT_EPS 1.1920929e-07f
#define LANES 8

/* Data terms of one warp (spec 3.5): grad = i1wx^2 + i1wy^2, rho_c = i1w - i1wx*u1 - i1wy*u2 - i0. */
void tvl1_warp_terms(long n, const float *restrict i1w, const float *restrict i1wx,
                     const float *restrict i1wy, const float *restrict u1,
                     const float *restrict u2, const float *restrict i0,
                     float *restrict grad, float *restrict rho_c)
{
    for (long i = 0; i < n; i++) {
        grad[i] = i1wx[i] * i1wx[i] + i1wy[i] * i1wy[i];
        rho_c[i] = i1w[i] - i1wx[i] * u1[i] - i1wy[i] * u2[i] - i0[i];
    }
}

/* Threshold step of one row: the coefficient c with v = u + c * (i1wx, i1wy, gamma). */
static void threshold_row(int w, const float *restrict u1, const float *restrict u2,
                          const float *restrict u3, const float *restrict ix,
                          const float *restrict iy, const float *restrict g,
                          const float *restrict rc, float l_t, float gamma, float *restrict coef)
{
    for (int x = 0; x < w; x++) /* rho first, kept in coef */
        coef[x] = rc[x] + (ix[x] * u1[x] + iy[x] * u2[x]);
    if (u3)
        for (int x = 0; x < w; x++)
            coef[x] = coef[x] + gamma * u3[x];
    for (int x = 0; x < w; x++) {
        float rho = coef[x], gr = g[x];
        float lg = l_t * gr;
        float flat = -rho / (gr > FLT_EPS ? gr : 1.0f); /* the guard keeps every lane finite */
        flat = gr > FLT_EPS ? flat : 0.0f;
        coef[x] = rho < -lg ? l_t : (rho > lg ? -l_t : flat);
    }
}

/* Primal update of one field's row in place: u = (u + c*wt) + theta*div(px, py); adds the squared
 * updates to the lanes of acc. py_up is the (old) py of the row above, a zero row at y = 0;
 * sq is a row of scratch. */
static void primal_row(int w, float *restrict u, const float *restrict px,
                       const float *restrict py, const float *restrict py_up,
                       const float *restrict coef, const float *restrict wt, float theta,
                       float *restrict sq, double *restrict acc)
{
    {   /* x = 0: the left neighbour is the zero padding */
        float un = (u[0] + coef[0] * wt[0]) + theta * ((px[0] - 0.0f) + (py[0] - py_up[0]));
        float d = un - u[0];
        sq[0] = d * d;
        u[0] = un;
    }
    for (int x = 1; x < w; x++) {
        float un = (u[x] + coef[x] * wt[x]) + theta * ((px[x] - px[x - 1]) + (py[x] - py_up[x]));
        float d = un - u[x];
        sq[x] = d * d;
        u[x] = un;
    }
    int x = 0;
    for (; x + LANES <= w; x += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] += (double)sq[x + j];
    for (; x < w; x++)
        acc[0] += (double)sq[x];
}

/* Chambolle step of one pixel's duals from its forward differences (ux, uy). */
static inline void dual_px(float *restrict px, float *restrict py, float ux, float uy, float taut)
{
    double dx = ux, dy = uy;
    float norm = 1.0f + taut * (float)sqrt(dx * dx + dy * dy);
    *px = (*px + taut * ux) / norm;
    *py = (*py + taut * uy) / norm;
}

/* Dual update of one field's row in place from the new u: row u and the row below (NULL on the last
 * row, where the y difference is 0); the x difference is 0 on the last column. */
static void dual_row(int w, const float *restrict u, const float *restrict below,
                     float *restrict px, float *restrict py, float taut)
{
    if (below) {
        for (int x = 0; x < w - 1; x++)
            dual_px(px + x, py + x, u[x + 1] - u[x], below[x] - u[x], taut);
        dual_px(px + w - 1, py + w - 1, 0.0f, below[w - 1] - u[w - 1], taut);
    } else {
        for (int x = 0; x < w - 1; x++)
            dual_px(px + x, py + x, u[x + 1] - u[x], 0.0f, taut);
        dual_px(px + w - 1, py + w - 1, 0.0f, 0.0f, taut);
    }
}

/* One whole iteration of every field (2, or 3 with the illumination term); returns the sum of the
 * squared updates. u: fields (nf, h, w); p: (nf, 2, h, w); data: i1wx, i1wy, grad, rho_c (4, h, w).
 * scratch: 4*w floats. */
static double iterate_once(int nf, int h, int w, float *u, float *p, const float *data,
                           float l_t, float theta, float taut, float gamma, float *scratch)
{
    const long hw = (long)h * w;
    const float *ix = data, *iy = data + hw, *g = data + 2 * hw, *rc = data + 3 * hw;
    float *coef = scratch, *zero = scratch + w, *gam = scratch + 2 * w, *sq = scratch + 3 * w;
    double acc[LANES] = {0};
    for (int x = 0; x < w; x++) {
        zero[x] = 0.0f;
        gam[x] = gamma;
    }
    for (int y = 0; y <= h; y++) {
        if (y < h) {
            long r = (long)y * w;
            threshold_row(w, u + r, u + hw + r, nf > 2 ? u + 2 * hw + r : NULL, ix + r, iy + r,
                          g + r, rc + r, l_t, gamma, coef);
            for (int f = 0; f < nf; f++) {
                float *px = p + (2L * f) * hw, *py = p + (2L * f + 1) * hw;
                const float *wt = f == 0 ? ix + r : (f == 1 ? iy + r : gam);
                primal_row(w, u + f * hw + r, px + r, py + r, y > 0 ? py + r - w : zero, coef,
                           wt, theta, sq, acc);
            }
        }
        if (y > 0) { /* row y-1 now has its new u, and so has its neighbour below */
            long r = (long)(y - 1) * w;
            for (int f = 0; f < nf; f++) {
                float *px = p + (2L * f) * hw, *py = p + (2L * f + 1) * hw;
                const float *uf = u + f * hw;
                dual_row(w, uf + r, y < h ? uf + r + w : NULL, px + r, py + r, taut);
            }
        }
    }
    double err = 0.0;
    for (int j = 0; j < LANES; j++)
        err += acc[j];
    return err;
}

/* Iterate a task from iteration n until its update sum falls to eps (sets *stopped) or n reaches
 * n_end (the next median filter, or the cap); returns the new n. The caller does the medians. */
int tvl1_iterate(int nf, int h, int w, float *u, float *p, const float *data, float l_t,
                 float theta, float taut, float gamma, double eps, int n, int n_end,
                 int *stopped, float *scratch)
{
    *stopped = 0;
    while (n < n_end) {
        double err = iterate_once(nf, h, w, u, p, data, l_t, theta, taut, gamma, scratch);
        n++;
        if (err <= eps) {
            *stopped = 1;
            break;
        }
    }
    return n;
}
