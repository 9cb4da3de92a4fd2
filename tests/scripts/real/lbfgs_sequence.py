"""Time-sequence prediction with two stacked LSTMCells trained by L-BFGS, in the style of the classic example.

Sine waves with random phase are generated in the script (instead of reading traindata.pt); the closure runs the
whole batch through the unrolled cells, prints the loss, calls backward and returns the loss.

    python lbfgs_sequence.py --steps 3 --out seq.pt
"""
from __future__ import print_function

import argparse

import torch
import torch.nn as nn
import torch.optim as optim


def generate_sine_waves(N=320, L=24, T=20, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(L, dtype=torch.float64).unsqueeze(0) + torch.randint(-4 * T, 4 * T, (N, 1), generator=g)
    return torch.sin(x / 1.0 / T)


class Sequence(nn.Module):
    def __init__(self, hidden=32):
        super(Sequence, self).__init__()
        self.hidden = hidden
        self.lstm1 = nn.LSTMCell(1, hidden)
        self.lstm2 = nn.LSTMCell(hidden, hidden)
        self.linear = nn.Linear(hidden, 1)

    def forward(self, input, future=0):
        outputs = []
        h_t = torch.zeros(input.size(0), self.hidden, dtype=torch.double)
        c_t = torch.zeros(input.size(0), self.hidden, dtype=torch.double)
        h_t2 = torch.zeros(input.size(0), self.hidden, dtype=torch.double)
        c_t2 = torch.zeros(input.size(0), self.hidden, dtype=torch.double)

        for input_t in input.split(1, dim=1):
            h_t, c_t = self.lstm1(input_t, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        for i in range(future):  # if we should predict the future
            h_t, c_t = self.lstm1(output, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        outputs = torch.cat(outputs, dim=1)
        return outputs


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--steps', type=int, default=3, help='steps to run')
    parser.add_argument('--out', type=str, default='seq.pt', help='where to save the trained weights')
    opt = parser.parse_args()
    # set random seed to 0
    torch.manual_seed(0)
    # load data and make training set
    data = generate_sine_waves()
    input = data[3:, :-1]
    target = data[3:, 1:]
    test_input = data[:3, :-1]
    test_target = data[:3, 1:]
    # build the model
    seq = Sequence()
    seq.double()
    criterion = nn.MSELoss()
    # use LBFGS as optimizer since we can load the whole data to train
    optimizer = optim.LBFGS(seq.parameters(), lr=0.8)
    # begin to train
    for i in range(opt.steps):
        print('STEP: ', i)

        def closure():
            optimizer.zero_grad()
            out = seq(input)
            loss = criterion(out, target)
            print('loss:', '%.8f' % loss.item())
            loss.backward()
            return loss
        optimizer.step(closure)
        # begin to predict, no need to track gradient here
        with torch.no_grad():
            future = 16
            pred = seq(test_input, future=future)
            loss = criterion(pred[:, :-future], test_target)
            print('test loss:', '%.8f' % loss.item())
            y = pred.detach()
        print('predicted continuation of wave 0:', ' '.join('%.3f' % v for v in y[0, -future::4].tolist()))

    seq.eval()
    with torch.no_grad():
        final = criterion(seq(test_input), test_target)
    print('final val loss %.8f' % final.item())
    torch.save(seq.state_dict(), opt.out)
